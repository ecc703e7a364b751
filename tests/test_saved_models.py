"""Models saved before deltaml's modules moved into layers still load and score the same."""

from __future__ import annotations

import json
from pathlib import Path

from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from tests.fixtures.make_saved_models import SCHEMA

SAVED = Path(__file__).parent / "fixtures" / "saved_models"


def _stage_classes(folder: Path) -> list[str]:
    classes = []
    for part in sorted(folder.glob("stages/*/metadata/part-00000*")):
        classes.append(json.loads(part.read_text().splitlines()[0])["class"])
    return classes


def test_the_fixture_names_the_modules_of_the_flat_layout() -> None:
    # The point of the fixture: its metadata names the pre-move modules, not today's.
    names = _stage_classes(SAVED / "pipeline") + _stage_classes(SAVED / "transformers")
    modules = {n.rsplit(".", 1)[0] for n in names if n.startswith("deltaml.")}
    assert modules == {
        "deltaml.cleaning",
        "deltaml.encoders",
        "deltaml.models",
        "deltaml.single_node",
        "deltaml.windows",
    }


def test_a_pipeline_saved_before_the_move_scores_as_it_did(spark: SparkSession) -> None:
    model = PipelineModel.load(str(SAVED / "pipeline"))
    rows = [tuple(r) for r in json.loads((SAVED / "input.json").read_text())]
    scored = model.transform(spark.createDataFrame(rows, SCHEMA)).select(
        "id", "plan_grouped", "plan_target", vector_to_array(F.col("probability")).alias("probability"), "prediction"
    )
    expected_rows = json.loads((SAVED / "expected.json").read_text())
    expected = spark.createDataFrame(expected_rows, scored.schema)
    assertDataFrameEqual(scored, expected, rtol=1e-9)


def test_parameter_stages_saved_before_the_move_keep_their_params() -> None:
    window, margin, labels = PipelineModel.load(str(SAVED / "transformers")).stages
    assert type(window).__name__ == "WindowFeatures"
    assert window.getOrDefault("eventsTable") == "/tables/events"
    assert window.getOrDefault("aggregates") == ["count::7", "sum:amount:30"]
    assert type(margin).__name__ == "MarginToProbability"
    assert labels.getOrDefault("labels") == ["a", "b", "c"]
