"""Search spaces from YAML: bounds and types of every distribution, nested choices, labels, errors, a TPE run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import yaml
from hyperopt import Trials, fmin, hp, space_eval, tpe
from hyperopt.base import Domain
from hyperopt.exceptions import DuplicateLabel
from hyperopt.pyll.stochastic import sample
from pydantic import ValidationError

from deltaml.config.schema import CandidateConfig
from deltaml.config.search_space import (
    DEFAULT_SPACES,
    build_space,
    describe,
    params_from_sample,
    searched_params,
    suggest_sample,
    validate_search,
)

N_SAMPLES = 200


@pytest.fixture(params=["hyperopt", "optuna"])
def engine(request: pytest.FixtureRequest) -> str:
    """Both engines draw from the same YAML space: every shape test runs with each."""
    return str(request.param)


def _draw(
    search: dict[str, Any], seed: int = 0, n: int = N_SAMPLES, label: str = "family", engine: str = "hyperopt"
) -> list[dict[str, Any]]:
    """``n`` seeded samples of the space of ``search`` (Hyperopt's or Optuna's), turned into Spark params."""
    if engine == "optuna":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        return [params_from_sample(suggest_sample(study.ask(), search, label), search) for _ in range(n)]
    space = build_space(search, label)
    rng = np.random.default_rng(seed)
    return [params_from_sample(sample(space, rng=rng), search) for _ in range(n)]


@pytest.mark.parametrize(
    ("spec", "kind", "low", "high"),
    [
        ({"uniform": [0, 1]}, float, 0.0, 1.0),
        ({"uniform": [-2.5, 2.5]}, float, -2.5, 2.5),
        ({"loguniform": [1.0e-4, 1]}, float, 1.0e-4, 1.0),
        ({"quniform": [2, 10, 1]}, int, 2, 10),
        ({"quniform": [10, 200, 10]}, int, 10, 200),
        ({"quniform": [0.0, 0.5, 0.05]}, float, 0.0, 0.5),
        ({"qloguniform": [1, 1000, 1]}, int, 1, 1000),
        ({"qloguniform": [16, 256, 16]}, int, 16, 256),
        ({"qloguniform": [0.01, 1, 0.01]}, float, 0.01, 1.0),
        ({"randint": [2, 6]}, int, 2, 5),
    ],
)
def test_every_distribution_stays_in_bounds_with_the_right_type(
    spec: dict[str, list[float]], kind: type, low: float, high: float, engine: str
) -> None:
    values = [params["x"] for params in _draw({"x": spec}, engine=engine)]
    assert all(type(v) is kind for v in values), {type(v) for v in values}
    slack = 1e-12 * max(1.0, abs(high))
    assert all(low - slack <= v <= high + slack for v in values), (min(values), max(values))
    assert len(set(values)) > 1
    (args,) = spec.values()
    if len(args) == 3:  # quantised: a multiple of q, written without float noise
        q = args[2]
        assert all(math.isclose(v / q, round(v / q), abs_tol=1e-9) for v in values)
        decimals = len(str(q).split(".")[1]) if isinstance(q, float) else 0
        assert all(v == round(v, decimals) for v in values)


def test_randint_excludes_high_and_draws_every_integer_below_it(engine: str) -> None:
    values = {params["maxDepth"] for params in _draw({"maxDepth": {"randint": [2, 6]}}, engine=engine)}
    assert values == {2, 3, 4, 5}


def test_quniform_with_a_whole_q_reaches_both_bounds_as_ints(engine: str) -> None:
    values = {params["maxDepth"] for params in _draw({"maxDepth": {"quniform": [2, 6, 1]}}, engine=engine)}
    assert values == {2, 3, 4, 5, 6}


def test_loguniform_spans_orders_of_magnitude(engine: str) -> None:
    values = [params["regParam"] for params in _draw({"regParam": {"loguniform": [1.0e-6, 1]}}, engine=engine)]
    decades = {math.floor(math.log10(v)) for v in values}
    assert decades == {-6, -5, -4, -3, -2, -1}
    # Log-uniform: about a sixth of the draws per decade, where a uniform draw would put ~all above 0.1.
    below_milli = sum(v < 1.0e-3 for v in values) / len(values)
    assert 0.35 < below_milli < 0.65


def test_numeric_strings_from_yaml_are_numbers(engine: str) -> None:
    # PyYAML reads 1e-4 (no dot) as a string; bounds accept it anyway.
    search = yaml.safe_load("regParam: {loguniform: [1e-4, 1e-1]}\nmaxIter: {quniform: ['10', '50', '10']}")
    assert search["regParam"]["loguniform"][0] == "1e-4"
    draws = _draw(search, n=50, engine=engine)
    assert all(1.0e-4 <= d["regParam"] <= 1.0e-1 for d in draws)
    assert {d["maxIter"] for d in draws} <= {10, 20, 30, 40, 50}
    assert all(type(d["maxIter"]) is int for d in draws)


@pytest.mark.parametrize(
    ("options", "kind"),
    [
        (["gini", "entropy"], str),
        ([True, False], bool),
        ([0.0, 0.5, 1.0], float),
        ([20, 50], int),
        ([[16, 8], [32], [64, 32, 16]], list),
    ],
)
def test_choice_draws_each_option_with_its_own_type(options: list[Any], kind: type, engine: str) -> None:
    values = [params["x"] for params in _draw({"x": {"choice": options}}, engine=engine)]
    assert all(type(v) is kind for v in values)
    drawn = [tuple(v) if isinstance(v, list) else v for v in values]
    expected = [tuple(o) if isinstance(o, list) else o for o in options]
    assert set(drawn) == set(expected)


def test_nested_choice_sets_its_params_only_when_its_branch_is_drawn(engine: str) -> None:
    search = {
        "maxDepth": {"choice": [3, {"maxDepth": 8, "minInstancesPerNode": {"randint": [1, 20]}}]},
        "maxBins": 32,
    }
    draws = _draw(search, engine=engine)
    shallow = [d for d in draws if d["maxDepth"] == 3]
    deep = [d for d in draws if d["maxDepth"] == 8]
    assert shallow and deep and len(shallow) + len(deep) == len(draws)
    assert all(d == {"maxDepth": 3, "maxBins": 32} for d in shallow)
    assert all(set(d) == {"maxDepth", "minInstancesPerNode", "maxBins"} for d in deep)
    assert all(type(d["minInstancesPerNode"]) is int and 1 <= d["minInstancesPerNode"] < 20 for d in deep)
    assert len({d["minInstancesPerNode"] for d in deep}) > 5


def test_a_group_key_of_mapping_options_is_not_a_spark_param(engine: str) -> None:
    search = {
        "regularization": {
            "choice": [
                {"regParam": 0.0},
                {"regParam": {"loguniform": [1.0e-4, 1]}, "elasticNetParam": {"uniform": [0, 1]}},
            ]
        },
        "maxIter": 100,
    }
    draws = _draw(search, engine=engine)
    plain = [d for d in draws if d["regParam"] == 0.0]
    elastic = [d for d in draws if "elasticNetParam" in d]
    assert plain and elastic and len(plain) + len(elastic) == len(draws)
    assert all(d == {"regParam": 0.0, "maxIter": 100} for d in plain)
    assert all(1.0e-4 <= d["regParam"] <= 1 and 0 <= d["elasticNetParam"] <= 1 for d in elastic)
    assert all("regularization" not in d for d in draws)
    assert searched_params(search) == {"regParam", "elasticNetParam", "maxIter"}


def test_choices_nest_more_than_one_level(engine: str) -> None:
    search = {
        "solver": {
            "choice": [
                {"solver": "l-bfgs"},
                {"solver": "gd", "step": {"choice": [{"stepSize": {"uniform": [0.01, 0.1]}}, {"stepSize": 0.5}]}},
            ]
        }
    }
    draws = _draw(search, engine=engine)
    assert {d["solver"] for d in draws} == {"l-bfgs", "gd"}
    gd_steps = [d["stepSize"] for d in draws if d["solver"] == "gd"]
    assert 0.5 in gd_steps and any(0.01 <= s <= 0.1 for s in gd_steps)
    assert all(set(d) == {"solver"} for d in draws if d["solver"] == "l-bfgs")


def test_fixed_scalars_pass_through(engine: str) -> None:
    search = {"maxIter": 50, "family": "binomial", "fitIntercept": False, "tol": 1.0e-6}
    assert build_space(search, "lr") == search
    assert _draw(search, n=3, engine=engine) == [search] * 3


def test_params_from_sample_makes_numpy_scalars_python() -> None:
    search = {
        "maxDepth": {"quniform": [2, 10, 1]},
        "regParam": {"uniform": [0, 1]},
        "impurity": {"choice": ["gini", "entropy"]},
        "layers": {"choice": [[16, 8]]},
        "bootstrap": {"choice": [True, False]},
    }
    point = {
        "maxDepth": np.float64(4.0),
        "regParam": np.float64(0.25),
        "impurity": np.str_("gini"),
        "layers": np.array([16, 8]),
        "bootstrap": np.bool_(True),
    }
    params = params_from_sample(point, search)
    assert params == {"maxDepth": 4, "regParam": 0.25, "impurity": "gini", "layers": [16, 8], "bootstrap": True}
    assert [type(params[k]) for k in point] == [int, float, str, list, bool]
    assert all(type(size) is int for size in params["layers"])  # type: ignore[union-attr]


def test_two_families_sharing_param_names_fit_in_one_space() -> None:
    lr = {"maxIter": {"quniform": [10, 100, 10]}, "regParam": {"loguniform": [1.0e-4, 1]}}
    gbt = {"maxIter": {"quniform": [20, 200, 20]}, "stepSize": {"uniform": [0.01, 0.3]}}
    space = {
        "family": hp.choice(
            "family", [("lr", build_space(lr, "logistic_regression")), ("gbt", build_space(gbt, "gbt"))]
        )
    }
    rng = np.random.default_rng(0)
    drawn = {"lr": 0, "gbt": 0}
    for _ in range(100):
        name, point = sample(space, rng=rng)["family"]
        params = params_from_sample(point, lr if name == "lr" else gbt)
        assert set(params) == set(lr if name == "lr" else gbt)
        drawn[name] += 1
    assert drawn["lr"] and drawn["gbt"]
    # Hyperopt's Domain (what fmin builds) sees every label once, and both families' maxIter.
    labels = set(Domain(lambda _: 0.0, space).params)
    assert {"logistic_regression.maxIter", "gbt.maxIter", "logistic_regression.regParam", "gbt.stepSize"} < labels
    # The same search under the same label twice does collide, so the prefix is what keeps them apart.
    with pytest.raises(DuplicateLabel):
        Domain(lambda _: 0.0, {"a": build_space(lr, "x"), "b": build_space(lr, "x")})


def test_labels_are_prefixed_with_the_family_and_the_param_path() -> None:
    search = {
        "maxDepth": {"choice": [3, {"maxDepth": 8, "minInstancesPerNode": {"randint": [1, 20]}}]},
        "stepSize": {"uniform": [0.01, 0.3]},
    }
    trials = Trials()
    fmin(
        lambda _: 0.0,
        build_space(search, "gbt"),
        algo=tpe.suggest,
        max_evals=30,
        trials=trials,
        rstate=np.random.default_rng(0),
        show_progressbar=False,
    )
    labels = set().union(*(t["misc"]["vals"] for t in trials.trials))
    assert labels == {"gbt.maxDepth", "gbt.maxDepth.1.minInstancesPerNode", "gbt.stepSize"}


def test_same_seed_same_samples_different_seed_different_samples(engine: str) -> None:
    search = {
        "regParam": {"loguniform": [1.0e-4, 1]},
        "maxDepth": {"choice": [3, {"maxDepth": 8, "minInstancesPerNode": {"randint": [1, 20]}}]},
        "numTrees": {"qloguniform": [10, 500, 10]},
    }
    assert _draw(search, seed=7, n=30, engine=engine) == _draw(search, seed=7, n=30, engine=engine)
    assert _draw(search, seed=7, n=30, engine=engine) != _draw(search, seed=8, n=30, engine=engine)


def test_tpe_finds_the_minimum_and_argmin_reads_back_flat() -> None:
    search = {
        "regParam": {"loguniform": [1.0e-6, 1]},
        "maxDepth": {"choice": [3, {"maxDepth": 8, "minInstancesPerNode": {"randint": [1, 20]}}]},
        "numTrees": {"quniform": [10, 100, 10]},
        "maxIter": 20,
    }
    space = build_space(search, "rf")

    def objective(point: dict[str, Any]) -> float:
        params = params_from_sample(point, search)
        return (math.log10(params["regParam"]) + 2) ** 2  # type: ignore[arg-type]

    trials = Trials()
    fmin(
        objective,
        space,
        algo=tpe.suggest,
        max_evals=50,
        trials=trials,
        rstate=np.random.default_rng(0),
        show_progressbar=False,
    )
    assert trials.best_trial["result"]["loss"] < 0.05  # regParam within ~10^(-2 +- 0.22)
    best = params_from_sample(space_eval(space, trials.argmin), search)
    assert 10**-2.25 < best["regParam"] < 10**-1.75  # type: ignore[operator]
    assert best["maxIter"] == 20
    assert type(best["numTrees"]) is int and best["numTrees"] in range(10, 101, 10)
    assert best["maxDepth"] in (3, 8)
    assert ("minInstancesPerNode" in best) == (best["maxDepth"] == 8)
    assert all(not isinstance(v, dict) for v in best.values())
    assert all(type(v) in (int, float, str, bool, list) for v in best.values())


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"regParam": {"normal": [0, 1]}}, "search.regParam: unknown distribution 'normal'; use one of"),
        (
            {"regParam": {"uniform": [0, 1], "loguniform": [1, 2]}},
            "search.regParam: a distribution is a mapping with exactly one key, got ['loguniform', 'uniform']",
        ),
        ({"regParam": {}}, "search.regParam: a distribution is a mapping with exactly one key, got none"),
        ({"regParam": {"uniform": [0, 1, 2]}}, "search.regParam.uniform: takes [low, high], e.g. {uniform: [0, 1]}"),
        ({"maxDepth": {"quniform": [2, 10]}}, "search.maxDepth.quniform: takes [low, high, q]"),
        ({"maxDepth": {"randint": 10}}, "search.maxDepth.randint: takes [low, high], e.g. {randint: [2, 10]}, got 10"),
        ({"regParam": {"uniform": [1, 0.1]}}, r"search.regParam.uniform: low (1) must be less than high (0.1); swap"),
        ({"regParam": {"uniform": [0.5, 0.5]}}, "search.regParam.uniform: low (0.5) must be less than high (0.5)"),
        (
            {"regParam": {"loguniform": [0, 1]}},
            "search.regParam.loguniform: bounds are the real values and must be > 0",
        ),
        ({"regParam": {"loguniform": [-9, -1]}}, "search.regParam.loguniform: bounds are the real values"),
        ({"maxBins": {"qloguniform": [0, 256, 16]}}, "search.maxBins.qloguniform: bounds are the real values"),
        ({"maxDepth": {"quniform": [2, 10, 0]}}, "search.maxDepth.quniform: q must be > 0, got 0"),
        ({"maxDepth": {"quniform": [2, 10, -1]}}, "search.maxDepth.quniform: q must be > 0, got -1"),
        ({"maxDepth": {"quniform": [1, 10, 4]}}, "search.maxDepth.quniform: low (1) and high (10) must be multiples"),
        ({"maxDepth": {"randint": [2.5, 10]}}, "search.maxDepth.randint: bounds must be whole numbers"),
        ({"regParam": {"uniform": ["low", 1]}}, "search.regParam.uniform: low must be a finite number, got 'low'"),
        ({"regParam": {"uniform": [True, 2]}}, "search.regParam.uniform: low must be a finite number, got True"),
        ({"regParam": {"uniform": [0, ".inf"]}}, "search.regParam.uniform: high must be a finite number"),
        ({"impurity": {"choice": []}}, "search.impurity.choice: is empty; list at least one option"),
        ({"impurity": {"choice": "gini"}}, "search.impurity.choice: takes a list of options, got 'gini'"),
        ({"impurity": None}, "search.impurity: null is not a param value"),
        ({"maxDepth": [3, 5, 7]}, "search.maxDepth: a bare list is ambiguous; write {choice: [...]}"),
        ({"layers": {"choice": [[16, [8]]]}}, r"search.layers.choice[0][1]: a list option holds numbers"),
        ({"x": {"choice": [{"uniform": [0, 1]}, 0]}}, "search.x.choice[0]: a distribution cannot be a choice option"),
        ({"max depth": 3}, "search: param name 'max depth' is not a Spark param name"),
        (
            {"maxDepth": {"choice": [3, {"maxDepth": 8, "minInstancesPerNode": {"uniform": [5, 1]}}]}},
            "search.maxDepth.choice[1].minInstancesPerNode.uniform: low (5) must be less than high (1)",
        ),
        (
            {"maxDepth": {"choice": [3, {"minInstancesPerNode": {"randint": [1]}}]}},
            "search.maxDepth.choice[1].minInstancesPerNode.randint: takes [low, high]",
        ),
        (
            {"maxBins": 32, "maxDepth": {"choice": [3, {"maxDepth": 8, "maxBins": 64}]}},
            "search.maxDepth.choice[1].maxBins: 'maxBins' is also set by search.maxBins; set each param in one place",
        ),
        (
            {"a": {"choice": [{"stepSize": 0.1}]}, "b": {"choice": [{"stepSize": 0.2}]}},
            "search.b.choice[0].stepSize: 'stepSize' is also set by search.a.choice[0].stepSize",
        ),
    ],
)
def test_validate_search_names_the_path_and_the_fix_in_one_line(search: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_search(search)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_valid_spaces_pass_validation() -> None:
    validate_search({})
    validate_search(
        {
            "maxDepth": {"choice": [3, {"maxDepth": 8, "minInstancesPerNode": {"randint": [1, 20]}}, {}]},
            "stepSize": {"quniform": [0.0, 0.3, 0.01]},
            "layers": {"choice": [[16, 8], [32]]},
            "impurity": {"choice": ["gini", "entropy"]},
            "maxIter": 50,
        }
    )


def test_build_space_rejects_what_validation_rejects() -> None:
    with pytest.raises(ValueError, match=r"search\.regParam\.loguniform: bounds"):
        build_space({"regParam": {"loguniform": [0, 1]}}, "lr")
    with pytest.raises(ValueError, match="label must be a non-empty string"):
        build_space({"regParam": 0.1}, "")


def test_candidate_config_reports_the_search_error() -> None:
    with pytest.raises(ValidationError, match=r"search\.maxDepth\.randint: bounds must be whole numbers"):
        CandidateConfig(family="gbt", search={"maxDepth": {"randint": [1.5, 8]}})
    candidate = CandidateConfig(family="gbt", search={"maxDepth": {"randint": [2, 8]}})
    assert candidate.search == {"maxDepth": {"randint": [2, 8]}}


def test_describe_is_one_readable_line() -> None:
    search = {
        "regParam": {"loguniform": [1.0e-4, 1]},
        "maxDepth": {"choice": [3, {"maxDepth": 8, "minInstancesPerNode": {"randint": [1, 20]}}]},
        "stepSize": {"quniform": [0.0, 0.3, 0.01]},
        "layers": {"choice": [[16, 8], [32]]},
        "fitIntercept": True,
        "maxIter": 50,
    }
    assert describe(search) == (
        "regParam~loguniform[0.0001, 1], maxDepth~choice{3 | {maxDepth=8, minInstancesPerNode~randint[1, 20)}}, "
        "stepSize~quniform[0, 0.3, 0.01], layers~choice{[16, 8] | [32]}, fitIntercept=true, maxIter=50"
    )
    assert describe({}) == "(empty search space)"


@pytest.mark.parametrize(
    ("family", "tasks"),
    [
        ("logistic_regression", ["binary", "multiclass"]),
        ("linear_svc", ["binary"]),
        ("mlp", ["binary", "multiclass"]),
        ("random_forest", ["binary", "multiclass", "regression"]),
        ("gbt", ["binary", "regression"]),
        ("linear_regression", ["regression"]),
        ("hist_gradient_boosting", ["binary", "multiclass", "regression"]),
        ("lightgbm", ["binary", "multiclass", "regression"]),
    ],
)
def test_search_default_is_a_space_whose_every_draw_builds_the_family(
    spark: Any, family: str, tasks: list[str]
) -> None:
    """``search: default`` gives each family deltaml's space; params the candidate fixes stay fixed."""
    from deltaml.ml.models import model_stages
    from deltaml.ml.single_node import SINGLE_NODE_FAMILIES, single_node_estimator

    candidate = CandidateConfig.model_validate({"family": family, "search": "default"})
    assert candidate.search == DEFAULT_SPACES[family] and candidate.search
    rng = np.random.default_rng(0)
    space = build_space(candidate.search, family)
    for _ in range(5):
        params = params_from_sample(sample(space, rng=rng), candidate.search)
        assert set(params) == set(DEFAULT_SPACES[family])
        for task in tasks:
            if family in SINGLE_NODE_FAMILIES:
                single_node_estimator(family, task, params, seed=1)
            else:
                model_stages(family, params, seed=1, num_features=3, task=task, num_classes=3)
    fixed = next(iter(DEFAULT_SPACES[family]))
    pinned = CandidateConfig.model_validate({"family": family, "params": {fixed: 7}, "search": "default"})
    assert fixed not in pinned.search and set(pinned.search) == set(DEFAULT_SPACES[family]) - {fixed}
