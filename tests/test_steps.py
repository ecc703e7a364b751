"""The step declarations: one per step, consistent with each other, and enforced on what a step reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from deltaml.config.loader import load_config
from deltaml.config.schema import PipelineConfig
from deltaml.steps import DEFAULT_STEPS, STEP_NAMES, STEPS, step_named
from deltaml.steps.base import ConfigView, StepContext, UndeclaredSectionError
from deltaml.steps.outputs import EvaluateOutput, FitOutput, RegisterOutput, SplitOutput, ValidateOutput
from tests.conftest import TELCO_CONF


def _view(allowed: set[str]) -> PipelineConfig:
    config = load_config(TELCO_CONF).pipeline
    return ConfigView(config, frozenset(allowed), "demo")  # type: ignore[return-value]


def test_the_steps_in_order_and_what_deltaml_run_runs() -> None:
    assert STEP_NAMES == ("ingest", "validate", "split", "fit", "evaluate", "register", "score", "monitor")
    assert STEP_NAMES[:-1] == DEFAULT_STEPS
    assert [s.phase for s in STEPS] == ["train"] * 6 + ["predict", "monitor"]
    assert [s.name for s in STEPS if s.cacheable] == list(DEFAULT_STEPS)
    assert step_named("fit").produces is FitOutput
    with pytest.raises(KeyError, match="no step named 'train'; steps: ingest, validate"):
        step_named("train")


def test_each_output_has_one_producer_that_runs_before_its_consumers() -> None:
    producers = {s.produces: i for i, s in enumerate(STEPS) if s.produces is not None}
    assert producers == {ValidateOutput: 1, SplitOutput: 2, FitOutput: 3, EvaluateOutput: 4, RegisterOutput: 5}
    for position, step in enumerate(STEPS):
        assert all(producers[kind] < position for kind in step.consumes), step.name


def test_every_declared_section_is_a_path_of_the_config() -> None:
    effective = load_config(TELCO_CONF).effective
    for step in STEPS:
        for path in step.sections:
            node = effective
            for part in path.split("."):
                assert isinstance(node, dict) and part in node, f"{step.name}: {path}"
                node = node[part]


def test_a_step_reads_only_the_sections_it_declared() -> None:
    view = _view({"label", "monitor.top_k"})
    assert view.label.column == "churn"
    assert view.monitor.top_k == 50
    assert view.name == "telco_churn"  # where things live is always visible
    assert view.mlflow.experiment == "deltaml-telco-churn"
    with pytest.raises(UndeclaredSectionError, match=r"step 'demo' read config section 'features'"):
        _ = view.features
    with pytest.raises(UndeclaredSectionError, match=r"config section 'monitor\.window'"):
        _ = view.monitor.window
    with pytest.raises(UndeclaredSectionError, match=r"config section 'mlflow\.registered_model'"):
        _ = view.mlflow.registered_model
    with pytest.raises(AttributeError, match="read-only"):
        view.seed = 1


def test_a_property_reads_through_the_view() -> None:
    # gate_metric reads register.gate.metric and, by default, label.task: both must be declared.
    assert _view({"register", "label"}).gate_metric == "auc_roc"
    with pytest.raises(UndeclaredSectionError, match=r"config section 'register'"):
        _ = _view({"label"}).gate_metric
    # The YAML key (register) is what a step declares, not the Python attribute (registration).
    assert _view({"register"}).registration.gate.enabled is True


def test_every_step_resolves_its_tables_within_its_sections(spark: SparkSession, tmp_path: Path) -> None:
    loaded = load_config(TELCO_CONF, overrides=[f"state_dir={tmp_path}"])
    ctx = StepContext(spark=spark, loaded=loaded)
    tables = {step.name: [str(t) for t in step.tables(ctx.for_step(step)) if t is not None] for step in STEPS}
    state = tmp_path.resolve()
    assert tables["split"] == [
        f"{state}/warehouse/silver/telco_churn_clean",
        f"{state}/warehouse/silver/telco_churn_split",
    ]
    assert tables["score"][0] == f"{state}/warehouse/silver/telco_churn_clean"
    assert all(tables[name] for name in STEP_NAMES)
