"""What a step is and what it sees: its one declaration, the context of a run, its result.

Every step module declares ``STEP = Step(...)``: its name, the function that runs it, the config
sections its result depends on, the tables it reads and writes by configuration, the typed
outputs it consumes and produces, whether it can be skipped when unchanged, and its phase. The
runner, the cache and the CLI derive everything they know about steps from these declarations.

A step sees the config through :class:`ConfigView`: reading a section it did not declare is an
error, so the cache key (made of the declared sections) cannot miss what a step depends on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from deltaml._version import __version__
from deltaml.columns import MODEL_ARTIFACT, TAG_MODEL_URI
from deltaml.config.loader import LoadedConfig
from deltaml.config.schema import PipelineConfig
from deltaml.io.catalog import Table
from deltaml.io.models import load_spark_model
from deltaml.io.tables import Tables, resolve_tables
from deltaml.steps.outputs import FitOutput, StepOutput

Phase = Literal["train", "predict", "monitor"]
OutputT = TypeVar("OutputT", bound=StepOutput)

# Sections every step may read without declaring them: where things live, not what they compute.
# Table paths are part of every cache key through ``Step.tables``.
ALWAYS_VISIBLE = frozenset(
    {"name", "state_dir", "tables", "spark", "mlflow.tracking_uri", "mlflow.registry_uri", "mlflow.experiment"}
)


class UndeclaredSectionError(AttributeError):
    """A step read a config section its declaration does not list (a bug in deltaml, not in the config)."""


@dataclass
class StepResult:
    """What a step reports: metrics and tags for its MLflow run, its typed output, and a summary line."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    output: StepOutput | None = None
    summary: str = ""


@dataclass
class StepContext:
    """Shared state of one pipeline run; :meth:`for_step` gives a step its view of it.

    Attributes:
        spark: The session.
        loaded: The validated config.
        git_sha: The code's git commit, for lineage tags.
        produced: The outputs earlier steps of this run produced (or restored when skipped), by type.
        run_ids: The MLflow run of each step of this run (for a skipped step, the run it reused).
        models: Fitted models loaded in this run, by model URI.
        sections: The config sections the current step declared; None for the runner (all visible).
        step: The current step's name (for error messages).
    """

    spark: SparkSession
    loaded: LoadedConfig
    git_sha: str = "unknown"
    produced: dict[type[StepOutput], StepOutput] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    models: dict[str, PipelineModel] = field(default_factory=dict)
    sections: frozenset[str] | None = None
    step: str = ""

    def for_step(self, step: Step) -> StepContext:
        """The context a step runs with: the same run state, the config limited to its sections."""
        return dataclasses.replace(self, sections=frozenset(step.sections), step=step.name)

    @property
    def config(self) -> PipelineConfig:
        """The validated pipeline config, as much of it as the current step declared."""
        if self.sections is None:
            return self.loaded.pipeline
        return cast(PipelineConfig, ConfigView(self.loaded.pipeline, self.sections, self.step))

    @property
    def tables(self) -> Tables:
        """The resolved tables of this pipeline."""
        return resolve_tables(self.loaded.pipeline)

    @property
    def training_source(self) -> Table:
        """The table the split step reads: the contract's clean table, or raw without a contract."""
        return self.tables.clean if self.loaded.pipeline.contract is not None else self.tables.raw

    def provenance(self) -> str:
        """Which config and code a result comes from, as reports and descriptions print it."""
        return (
            f"config hash {self.loaded.config_hash}, seed {self.loaded.pipeline.seed}, deltaml {__version__}, "
            f"git {self.git_sha[:12]}"
        )

    def output(self, kind: type[OutputT]) -> OutputT | None:
        """What an earlier step of this run produced of this type, if it ran (or was reused)."""
        found = self.produced.get(kind)
        return cast(OutputT, found) if found is not None else None

    def publish(self, output: StepOutput) -> None:
        """Hand an output to the steps after this one."""
        self.produced[type(output)] = output


class ConfigView:
    """A read-only view of a config model that lets a step read only its declared sections.

    ``allowed`` holds dotted paths by YAML key (``register``, ``monitor.top_k``). Properties of the
    model are evaluated through the view, so ``gate_metric`` counts as a read of ``register``.
    Methods and non-field attributes pass through.
    """

    def __init__(self, model: Any, allowed: frozenset[str], step: str, prefix: str = "") -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_allowed", allowed | ALWAYS_VISIBLE if not prefix else allowed)
        object.__setattr__(self, "_step", step)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        model = object.__getattribute__(self, "_model")
        attribute = getattr(type(model), name, None)
        if isinstance(attribute, property) and attribute.fget is not None:
            return attribute.fget(self)
        fields = getattr(type(model), "model_fields", {})
        if name not in fields:
            return getattr(model, name)
        key = f"{self._prefix}{fields[name].alias or name}"
        value = getattr(model, name)
        if any(key == a or key.startswith(f"{a}.") for a in self._allowed):
            return value
        if any(a.startswith(f"{key}.") for a in self._allowed):
            return ConfigView(value, self._allowed, self._step, f"{key}.")
        raise UndeclaredSectionError(
            f"step '{self._step}' read config section '{key}', which its declaration does not list; "
            "add it to the step's sections (deltaml.steps.<step>.STEP) so the cache key includes it"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the config is read-only (tried to set {name})")


def _no_extra_key(ctx: StepContext) -> dict[str, Any]:
    return {}


def _always(cfg: PipelineConfig) -> bool:
    return True


def _never_bypassed(cfg: PipelineConfig) -> str | None:
    return None


def _nothing_to_check(cfg: PipelineConfig) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class Step:
    """One step, declared once in its module.

    Attributes:
        name: The step's name on the command line and in MLflow (``--step NAME``).
        run: Runs the step with its :class:`StepContext` view.
        phase: ``train``, ``predict`` or ``monitor``: ``deltaml run`` runs train and predict.
        sections: Config sections (dotted YAML paths) the step's result depends on: the cache key,
            and all the step may read.
        tables: The tables it reads or writes by configuration (their paths are part of the key).
        consumes: Output types of earlier steps it uses.
        produces: The output type it hands on, if any.
        cacheable: Skipped when a finished run has the same key and its tables have not moved.
        key_inputs: What else the result depends on, known before it runs (the source's files, the model version).
        bypass_cache: Why this config must always run the step (None: it may be skipped).
        in_default_run: Whether ``deltaml run`` without ``--step`` includes it for this config.
        on_reuse: Called after a skipped run's output is restored (to recheck what time changes).
        check: The config's problems that only the step's libraries can see (a model param a family does not
            take), as ``(config key, problem)`` pairs; run with no Spark session, before any step runs.
        headline: Metrics and tags of its result (names, or prefixes ending in ``_``) that also go on the
            pipeline's parent run, so the MLflow run table compares whole pipelines on quality.
    """

    name: str
    run: Callable[[StepContext], StepResult]
    phase: Phase
    sections: tuple[str, ...]
    tables: Callable[[StepContext], Sequence[Table | None]]
    consumes: tuple[type[StepOutput], ...] = ()
    produces: type[StepOutput] | None = None
    cacheable: bool = True
    key_inputs: Callable[[StepContext], dict[str, Any]] = _no_extra_key
    bypass_cache: Callable[[PipelineConfig], str | None] = _never_bypassed
    in_default_run: Callable[[PipelineConfig], bool] = _always
    on_reuse: Callable[[StepContext, str], None] | None = None
    check: Callable[[PipelineConfig], list[tuple[str, str]]] = _nothing_to_check
    headline: tuple[str, ...] = ()

    def headline_of(self, values: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` (metrics or tags) named by :attr:`headline`."""
        named = [h for h in self.headline if not h.endswith("_")]
        prefixes = tuple(h for h in self.headline if h.endswith("_"))
        return {k: v for k, v in values.items() if k in named or (prefixes and k.startswith(prefixes))}


def load_fitted_model(ctx: StepContext) -> tuple[PipelineModel, str]:
    """The model fitted earlier in this run (or reused from the fit run it skipped to), else the latest fit run's."""
    fitted = ctx.output(FitOutput)
    if fitted is not None:
        uri = fitted.model_uri
    else:
        from deltaml.io.tracking import latest_step_run

        run = latest_step_run(ctx.loaded.pipeline, "fit")
        uri = run.data.tags.get(TAG_MODEL_URI) or f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}"
    if uri not in ctx.models:
        ctx.models[uri] = load_spark_model(uri)
    return ctx.models[uri], uri
