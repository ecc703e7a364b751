"""Search spaces written in YAML: validating them, building Hyperopt expressions or Optuna samples, reading them back.

A ``search`` mapping (one per model family in the config) maps a Spark ML param name to a
distribution spec, a mapping with exactly one key:

- ``{uniform: [low, high]}``: a float in ``[low, high]``.
- ``{loguniform: [low, high]}``: a float in ``[low, high]`` whose logarithm is uniform; the bounds
  are the real values (> 0), not their logarithms.
- ``{quniform: [low, high, q]}`` and ``{qloguniform: [low, high, q]}``: the same, rounded to a
  multiple of ``q``. ``low`` and ``high`` must be multiples of ``q``, so every value lies in
  ``[low, high]`` (both included). A whole ``q`` (``1``, ``5``) gives Python ints.
- ``{randint: [low, high]}``: an int from ``low`` to ``high - 1``; ``high`` is excluded, as in
  ``hp.randint``, ``numpy`` and ``range``.
- ``{choice: [option, ...]}``: one of the options. An option is a scalar (number, string, bool), a
  list (e.g. hidden layer sizes ``[16, 8]``), or a mapping of params to scalars or specs: a nested
  choice. When a mapping option is drawn, its params are set and the key above it is not (unless
  the mapping names it too), so the key may be a Spark param or just a name for the group.

A plain scalar instead of a spec is a fixed value. Numbers inside specs may be YAML strings such
as ``1e-4`` (PyYAML reads that as text). Every param is set in one place only: a param set inside
a nested choice may not also be a top-level key or set by another entry.

Hyperopt labels (and Optuna's param names) are ``<label>.<param>`` and, inside a nested choice,
``<label>.<param>.<option index>.<param>``, e.g. ``gbt.maxDepth.1.minInstancesPerNode``: stable
across runs, unique within a family, and distinct between families built with different labels.
An Optuna choice is drawn as the option's index, so options may be lists or mappings.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from hyperopt import hp
from hyperopt.pyll import scope

SparkParamValue = float | int | str | bool | list[int]


DISTRIBUTIONS = ("uniform", "loguniform", "quniform", "qloguniform", "randint", "choice")


# The argument names of each numeric distribution, in the order YAML lists them.
_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "qloguniform": ("low", "high", "q"),
    "randint": ("low", "high"),
}


_EXAMPLES = {
    "uniform": "[0, 1]",
    "loguniform": "[1.0e-4, 1]",
    "quniform": "[2, 10, 1]",
    "qloguniform": "[1, 1000, 1]",
    "randint": "[2, 10]",
}


_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# Relative tolerance when checking that a bound is a multiple of q (0.3 / 0.01 is 29.999999999999996).
_MULTIPLE_TOLERANCE = 1e-9


# ``search: default``: a space per family over the params that matter most for it, with ranges that
# hold up across tables (regularisation over orders of magnitude, tree size and leaf size, the
# learning rate of boosted trees). Trees' sizes (numTrees, maxIter, max_iter, n_estimators) stay
# params: they buy accuracy with time, which is the user's budget to set.
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "logistic_regression": {"regParam": {"loguniform": [1e-4, 1.0]}, "elasticNetParam": {"uniform": [0.0, 1.0]}},
    "linear_regression": {"regParam": {"loguniform": [1e-4, 1.0]}, "elasticNetParam": {"uniform": [0.0, 1.0]}},
    "linear_svc": {"regParam": {"loguniform": [1e-4, 1.0]}},
    "mlp": {"hidden_layers": {"choice": [[16], [32], [32, 16]]}},
    "random_forest": {
        "maxDepth": {"quniform": [4, 12, 1]},
        "minInstancesPerNode": {"quniform": [1, 20, 1]},
        "featureSubsetStrategy": {"choice": ["sqrt", "onethird", "0.5"]},
        "subsamplingRate": {"uniform": [0.6, 1.0]},
    },
    "gbt": {
        "maxDepth": {"quniform": [2, 6, 1]},
        "stepSize": {"loguniform": [0.03, 0.3]},
        "minInstancesPerNode": {"quniform": [1, 20, 1]},
        "subsamplingRate": {"uniform": [0.6, 1.0]},
    },
    "hist_gradient_boosting": {
        "learning_rate": {"loguniform": [0.02, 0.3]},
        "max_leaf_nodes": {"quniform": [8, 64, 1]},
        "min_samples_leaf": {"quniform": [5, 100, 1]},
        "l2_regularization": {"loguniform": [1e-3, 10.0]},
    },
    "lightgbm": {
        "learning_rate": {"loguniform": [0.02, 0.3]},
        "num_leaves": {"quniform": [8, 128, 1]},
        "min_child_samples": {"quniform": [5, 100, 1]},
        "reg_lambda": {"loguniform": [1e-3, 10.0]},
        "colsample_bytree": {"uniform": [0.5, 1.0]},
    },
}


def default_search(family: str, fixed: Any = ()) -> dict[str, Any]:
    """deltaml's search space of ``family`` (``search: default``), without the params in ``fixed``.

    Params the candidate fixes keep their value: a param is set in one place only. An unknown family
    gets an empty space (the family itself is then reported by the config's validation).
    """
    fixed = set(fixed)
    return {name: spec for name, spec in DEFAULT_SPACES.get(family, {}).items() if name not in fixed}


@dataclass(frozen=True)
class _Fixed:
    """A fixed value: a scalar, or a list inside a choice."""

    value: Any


@dataclass(frozen=True)
class _Distribution:
    """A numeric distribution with its bounds already checked."""

    name: str
    low: float | int
    high: float | int
    q: float | int | None = None

    @property
    def integral(self) -> bool:
        """Whether every value is a whole number (randint, or quantised with a whole q)."""
        return self.name == "randint" or (self.q is not None and _is_whole(self.q))


@dataclass(frozen=True)
class _Choice:
    """One of several options; a mapping option is a nested sub-space."""

    options: tuple[_Fixed | dict[str, _Node], ...]


_Node = _Fixed | _Distribution | _Choice


def validate_search(search: dict[str, Any]) -> None:
    """Check a search space as written in YAML.

    Args:
        search: Spark ML param name -> distribution spec or fixed value.

    Raises:
        ValueError: One line naming the param path (e.g. ``search.maxDepth.choice[1].maxBins``),
            what is wrong and how to fix it.
    """
    _parse(search)


def build_space(search: dict[str, Any], label: str) -> dict[str, Any]:
    """Build the Hyperopt space of a search mapping.

    Args:
        search: Spark ML param name -> distribution spec or fixed value.
        label: Prefix of every Hyperopt label, normally the family name, so that spaces of several
            families can share param names in one process (and one space).

    Returns:
        A dict of param name -> hp expression (or fixed value), for ``fmin``, ``space_eval`` and
        ``hyperopt.pyll.stochastic.sample``. Integer-valued distributions evaluate to ints.

    Raises:
        ValueError: The search space or the label is invalid.
    """
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"the search space label must be a non-empty string such as the family name, got {label!r}")
    tree = _parse(search)
    return {name: _build_node(node, f"{label}.{name}") for name, node in tree.items()}


def suggest_sample(trial: Any, search: dict[str, Any], label: str) -> dict[str, Any]:
    """Draw a point of the space from an Optuna trial (define-by-run), shaped like ``space_eval``'s result.

    The distributions map to Optuna's: ``uniform`` and ``loguniform`` to ``suggest_float`` (with
    ``log``), ``quniform`` to ``suggest_int``/``suggest_float`` with ``step=q``, ``randint [low,
    high)`` to ``suggest_int(low, high - 1)``, ``qloguniform`` to a log-uniform draw rounded to a
    multiple of ``q`` (Optuna has no quantised log distribution but for ``q`` 1), ``choice`` to
    ``suggest_categorical`` over the option indexes.

    Args:
        trial: An ``optuna.Trial`` (from ``Study.ask``).
        search: The search mapping as written in YAML.
        label: Prefix of every param name, as in :func:`build_space`.

    Returns:
        Param name -> value (a nested dict for a drawn mapping option); :func:`params_from_sample` flattens it.

    Raises:
        ValueError: The search space or the label is invalid.
    """
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"the search space label must be a non-empty string such as the family name, got {label!r}")
    return {name: _suggest_node(trial, node, f"{label}.{name}") for name, node in _parse(search).items()}


def params_from_sample(sample: dict[str, Any], search: dict[str, Any]) -> dict[str, SparkParamValue]:
    """Turn a point of the space (what ``space_eval`` or ``pyll.stochastic.sample`` returns) into Spark params.

    The params of a drawn nested-choice option are merged into the top level (the key above them
    is dropped). Values of integer distributions (``randint``, or ``quniform``/``qloguniform`` with a
    whole ``q``) become ``int``; values of a float-``q`` distribution are rounded to the decimals
    of ``q`` (``0.30000000000000004`` becomes ``0.3``); numpy scalars become Python scalars.

    Args:
        sample: The evaluated point, keyed like the space ``build_space(search, ...)`` returned.
        search: The search mapping the space was built from.

    Returns:
        Flat Spark param name -> value.

    Raises:
        ValueError: The search space is invalid.
    """
    sources = _value_sources(_parse(search))
    params: dict[str, SparkParamValue] = {}
    _flatten(sample, sources, params)
    return params


def searched_params(search: dict[str, Any]) -> set[str]:
    """The Spark params a search space can set (nested-choice params included, group keys excluded).

    Args:
        search: Spark ML param name -> distribution spec or fixed value.

    Returns:
        The param names.

    Raises:
        ValueError: The search space is invalid.
    """
    return set(_value_sources(_parse(search)))


def describe(search: dict[str, Any]) -> str:
    """A one-line summary of a search space for logs.

    Example: ``regParam~loguniform[0.0001, 1], maxDepth~randint[2, 10), maxIter=50``.

    Args:
        search: Spark ML param name -> distribution spec or fixed value.

    Returns:
        The summary; ``(empty search space)`` for an empty mapping.

    Raises:
        ValueError: The search space is invalid.
    """
    tree = _parse(search)
    return _describe_params(tree) if tree else "(empty search space)"


# -- parsing and validation --------------------------------------------------------------------------------------


def _parse(search: Any) -> dict[str, _Node]:
    if not isinstance(search, dict):
        raise ValueError(f"search: must be a mapping of Spark param -> distribution, got {type(search).__name__}")
    return _parse_params(search, "search")


def _parse_params(mapping: dict[Any, Any], path: str) -> dict[str, _Node]:
    """Parse a mapping of params (the top level, or a nested-choice option) and check no param is set twice."""
    parsed: dict[str, _Node] = {}
    set_where: dict[str, str] = {}
    for name, raw in mapping.items():
        if not isinstance(name, str) or not _PARAM_NAME.match(name):
            raise ValueError(f"{path}: param name {name!r} is not a Spark param name; use e.g. regParam or maxDepth")
        node = _parse_node(raw, f"{path}.{name}")
        for param, where in _names_set(name, node, f"{path}.{name}").items():
            if param in set_where:
                raise ValueError(f"{where}: '{param}' is also set by {set_where[param]}; set each param in one place")
            set_where[param] = where
        parsed[name] = node
    return parsed


def _parse_node(raw: Any, path: str) -> _Node:
    if isinstance(raw, dict):
        if len(raw) != 1:
            keys = sorted(map(str, raw)) or "none"
            raise ValueError(
                f"{path}: a distribution is a mapping with exactly one key, got {keys}; write e.g. {{uniform: [0, 1]}}"
            )
        ((name, args),) = raw.items()
        if name == "choice":
            return _parse_choice(args, f"{path}.choice")
        if name not in _ARGUMENTS:
            raise ValueError(f"{path}: unknown distribution {name!r}; use one of {', '.join(DISTRIBUTIONS)}")
        return _parse_distribution(name, args, f"{path}.{name}")
    if isinstance(raw, list):
        raise ValueError(
            f"{path}: a bare list is ambiguous; write {{choice: [...]}} to search over values, "
            "or {choice: [[16, 8]]} for one fixed list"
        )
    return _parse_scalar(raw, path)


def _parse_scalar(raw: Any, path: str) -> _Fixed:
    if raw is None:
        raise ValueError(f"{path}: null is not a param value; give a value or leave the param out")
    if isinstance(raw, bool | str):
        return _Fixed(raw)
    if not isinstance(raw, numbers.Real):
        raise ValueError(f"{path}: expected a number, string, bool or distribution, got {raw!r}")
    number = _as_number(raw)
    if number is None:
        raise ValueError(f"{path}: {raw!r} is not a value Spark accepts; give a finite number")
    return _Fixed(number)


def _parse_choice(options: Any, path: str) -> _Choice:
    if not isinstance(options, list):
        raise ValueError(f"{path}: takes a list of options, got {options!r}; write e.g. {{choice: [gini, entropy]}}")
    if not options:
        raise ValueError(f"{path}: is empty; list at least one option")
    parsed: list[_Fixed | dict[str, _Node]] = []
    for index, option in enumerate(options):
        where = f"{path}[{index}]"
        if isinstance(option, dict):
            if len(option) == 1 and next(iter(option)) in DISTRIBUTIONS:
                raise ValueError(
                    f"{where}: a distribution cannot be a choice option; a mapping option holds params, "
                    "e.g. {regParam: {uniform: [0, 1]}}"
                )
            parsed.append(_parse_params(option, where))
        elif isinstance(option, list):
            parsed.append(_Fixed([_parse_list_item(item, f"{where}[{i}]") for i, item in enumerate(option)]))
        else:
            parsed.append(_parse_scalar(option, where))
    return _Choice(tuple(parsed))


def _parse_list_item(item: Any, path: str) -> Any:
    if isinstance(item, dict | list) or item is None:
        raise ValueError(f"{path}: a list option holds numbers, strings or bools (e.g. [16, 8]), got {item!r}")
    return _parse_scalar(item, path).value


def _parse_distribution(name: str, args: Any, path: str) -> _Distribution:
    expected = _ARGUMENTS[name]
    usage = f"takes [{', '.join(expected)}], e.g. {{{name}: {_EXAMPLES[name]}}}"
    if not isinstance(args, list):
        raise ValueError(f"{path}: {usage}, got {args!r}")
    if len(args) != len(expected):
        raise ValueError(f"{path}: {usage}, got {len(args)} value{'' if len(args) == 1 else 's'}")
    values: list[int | float] = []
    for arg_name, arg in zip(expected, args, strict=True):
        number = _as_number(arg)
        if number is None:
            raise ValueError(f"{path}: {arg_name} must be a finite number, got {arg!r}")
        values.append(number)
    low, high = values[0], values[1]
    q = values[2] if len(values) == 3 else None
    if low >= high:
        raise ValueError(f"{path}: low ({low}) must be less than high ({high}); swap them or widen the range")
    if name in ("loguniform", "qloguniform") and low <= 0:
        raise ValueError(f"{path}: bounds are the real values and must be > 0, got low {low}; use e.g. [1.0e-4, 1]")
    if name == "randint":
        if not (_is_whole(low) and _is_whole(high)):
            raise ValueError(f"{path}: bounds must be whole numbers (values are low..high-1), got [{low}, {high}]")
        low, high = int(low), int(high)
    if q is not None:
        if q <= 0:
            raise ValueError(f"{path}: q must be > 0, got {q}")
        if not (_is_multiple(low, q) and _is_multiple(high, q)):
            raise ValueError(
                f"{path}: low ({low}) and high ({high}) must be multiples of q ({q}) so values stay in "
                "[low, high]; e.g. [2, 10, 1] or [0.0, 0.5, 0.05]"
            )
        if _is_whole(q):
            low, high, q = round(low), round(high), int(q)
    return _Distribution(name, low, high, q)


def _as_number(value: Any) -> int | float | None:
    """A finite int or float; numeric strings (YAML reads ``1e-4`` as text) count, bools do not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _is_whole(value: float | int) -> bool:
    return isinstance(value, int) or float(value).is_integer()


def _is_multiple(value: float | int, q: float | int) -> bool:
    ratio = value / q
    return abs(ratio - round(ratio)) <= _MULTIPLE_TOLERANCE * max(1.0, abs(ratio))


def _names_set(name: str, node: _Node, path: str) -> dict[str, str]:
    """The Spark params an entry can set, each with the path that sets it."""
    if not isinstance(node, _Choice):
        return {name: path}
    names: dict[str, str] = {}
    for index, option in enumerate(node.options):
        if isinstance(option, _Fixed):
            names.setdefault(name, path)
            continue
        for sub_name, sub_node in option.items():
            names.update(_names_set(sub_name, sub_node, f"{path}.choice[{index}].{sub_name}"))
    return names


# -- building ----------------------------------------------------------------------------------------------------


def _build_node(node: _Node, label: str) -> Any:
    if isinstance(node, _Fixed):
        return list(node.value) if isinstance(node.value, list) else node.value
    if isinstance(node, _Choice):
        options = [
            _build_node(option, label)
            if isinstance(option, _Fixed)
            else {name: _build_node(sub, f"{label}.{index}.{name}") for name, sub in option.items()}
            for index, option in enumerate(node.options)
        ]
        return hp.choice(label, options)
    return _build_distribution(node, label)


def _build_distribution(node: _Distribution, label: str) -> Any:
    if node.name == "randint":
        return hp.randint(label, node.low, node.high)
    if node.name == "uniform":
        return hp.uniform(label, node.low, node.high)
    if node.name == "loguniform":
        return hp.loguniform(label, math.log(node.low), math.log(node.high))
    if node.name == "quniform":
        expression = hp.quniform(label, node.low, node.high, node.q)
    else:
        expression = hp.qloguniform(label, math.log(node.low), math.log(node.high), node.q)
    return scope.int(expression) if node.integral else expression


def _suggest_node(trial: Any, node: _Node, label: str) -> Any:
    if isinstance(node, _Fixed):
        return list(node.value) if isinstance(node.value, list) else node.value
    if isinstance(node, _Choice):
        index = trial.suggest_categorical(label, list(range(len(node.options))))
        option = node.options[index]
        if isinstance(option, _Fixed):
            return _suggest_node(trial, option, label)
        return {name: _suggest_node(trial, sub, f"{label}.{index}.{name}") for name, sub in option.items()}
    low, high, q = node.low, node.high, node.q
    if node.name == "randint":
        return trial.suggest_int(label, int(low), int(high) - 1)
    if node.name in ("uniform", "loguniform"):
        return trial.suggest_float(label, float(low), float(high), log=node.name == "loguniform")
    assert q is not None
    if node.name == "quniform" or q == 1:
        if node.integral:
            return trial.suggest_int(label, int(low), int(high), step=int(q), log=node.name == "qloguniform")
        return trial.suggest_float(label, float(low), float(high), step=float(q))
    drawn = trial.suggest_float(label, float(low), float(high), log=True)
    value = min(max(round(drawn / q) * q, low), high)
    return int(value) if node.integral else float(value)


# -- reading samples back ----------------------------------------------------------------------------------------


def _value_sources(tree: dict[str, _Node]) -> dict[str, list[_Fixed | _Distribution]]:
    """Every fixed value or distribution that can give each Spark param its value."""
    sources: dict[str, list[_Fixed | _Distribution]] = {}

    def visit(name: str, node: _Node) -> None:
        if not isinstance(node, _Choice):
            sources.setdefault(name, []).append(node)
            return
        for option in node.options:
            if isinstance(option, _Fixed):
                sources.setdefault(name, []).append(option)
            else:
                for sub_name, sub_node in option.items():
                    visit(sub_name, sub_node)

    for name, node in tree.items():
        visit(name, node)
    return sources


def _flatten(sample: dict[str, Any], sources: dict[str, list[_Fixed | _Distribution]], out: dict[str, Any]) -> None:
    for name, value in sample.items():
        if isinstance(value, dict):
            _flatten(value, sources, out)
        else:
            out[name] = _spark_value(_to_python(value), sources.get(name, []))


def _to_python(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_to_python(item) for item in value]
    return value


def _spark_value(value: Any, sources: list[_Fixed | _Distribution]) -> Any:
    if not isinstance(value, float) or not sources:
        return value
    distributions = [s for s in sources if isinstance(s, _Distribution)]
    if len(distributions) != len(sources):
        return value
    if all(d.integral for d in distributions) and value.is_integer():
        return int(value)
    if all(d.q is not None and not d.integral for d in distributions):
        return round(value, max(_decimals(d.q) for d in distributions if d.q is not None))
    return value


def _decimals(q: float | int) -> int:
    exponent = Decimal(repr(q)).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


# -- describing --------------------------------------------------------------------------------------------------


def _describe_params(params: dict[str, _Node]) -> str:
    return ", ".join(_describe_entry(name, node) for name, node in params.items())


def _describe_entry(name: str, node: _Node) -> str:
    if isinstance(node, _Fixed):
        return f"{name}={_describe_value(node.value)}"
    if isinstance(node, _Choice):
        options = [
            _describe_value(option.value) if isinstance(option, _Fixed) else "{" + _describe_params(option) + "}"
            for option in node.options
        ]
        return f"{name}~choice{{{' | '.join(options)}}}"
    bounds = [node.low, node.high] if node.q is None else [node.low, node.high, node.q]
    text = ", ".join(f"{b:g}" for b in bounds)
    closing = ")" if node.name == "randint" else "]"
    return f"{name}~{node.name}[{text}{closing}"


def _describe_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_describe_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
