"""Multiclass and regression labels end to end: real data through `deltaml run`, checked independently."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from pyspark.ml import PredictionModel
from pyspark.ml.classification import GBTClassificationModel, RandomForestClassificationModel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.regression import GBTRegressionModel, RandomForestRegressionModel
from pyspark.sql import SparkSession
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score

from deltaml.cli import main
from deltaml.columns import FEATURES_COL, TREE_FEATURES_COL
from deltaml.ml.single_node import SingleNodeModel
from tests.browser import rendered_text
from tests.conftest import ROOT, write_config

pytestmark = pytest.mark.slow
TAG = 5e-7  # registered metrics are tags written with six decimals


def _conf(tmp_path: Path, name: str, edit: dict[str, object] | None = None) -> Path:
    data = yaml.safe_load((ROOT / "conf" / name).read_text())
    data["state_dir"] = str(tmp_path / "state")
    data["tuning"]["max_evals"] = 2
    data.update(edit or {})
    return write_config(tmp_path / name, data)


def _test_rows_with_predictions(
    spark: SparkSession, state: Path, split: str, predictions: str, key: str
) -> pd.DataFrame:
    test = spark.read.format("delta").load(str(state / split)).where("split = 'test'")
    scored = spark.read.format("delta").load(str(state / predictions))
    return test.join(scored, on=key).toPandas()


def _report_files(client: MlflowClient, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, "report")}


def _assert_the_rendered_report(run_id: str, title: str, label: str, metric: str) -> None:
    """The evaluation report as Chromium shows it: the header, the metrics and the gate's comparison."""
    text = rendered_text(Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/report/report.html")))
    for line in (
        f"{title}: evaluation on the test split",
        f"label\t{label}",
        f"MLflow run {run_id}",
        "Champion vs challenger",
        "decision\tpromoted: version 1 is the new @champion",
        "@champion\tnone yet: this is the first version",
        f"compared on\t{metric}, the test rows of ",
    ):
        assert line in text, f"{line!r} is not in the rendered report:\n{text[:3000]}"


def _assert_the_winner_reads_its_own_vector(model_uri: str, features: int, categorical: int) -> str:
    """A tree winner (single-node, or Spark's random forest and GBT) reads the tree vector (one slot per
    categorical column, split as categories); any other winner's pipeline does not build that vector.
    Returns the winner's family or model class."""
    stages = mlflow.spark.load_model(model_uri).stages
    single = [s for s in stages if isinstance(s, SingleNodeModel)]
    tree_vector = [s for s in stages if isinstance(s, VectorAssembler) and s.getOutputCol() == TREE_FEATURES_COL]
    if not single:
        (model,) = [s for s in stages if isinstance(s, PredictionModel)]
        trees = isinstance(
            model,
            RandomForestClassificationModel | GBTClassificationModel | RandomForestRegressionModel | GBTRegressionModel,
        )
        assert model.getFeaturesCol() == (TREE_FEATURES_COL if trees else FEATURES_COL)
        assert len(tree_vector) == (1 if trees else 0)
        if trees:
            assert model.numFeatures == features
        return type(model).__name__
    assert single[0].getFeaturesCol() == TREE_FEATURES_COL and len(tree_vector) == 1
    estimator = single[0].estimator()
    assert estimator.n_features_in_ == features
    if single[0].getFamily() == "hist_gradient_boosting":
        assert int(estimator.is_categorical_.sum()) == categorical
    return single[0].getFamily()


def _assert_pyfunc_gives_the_stored_scores(model_uri: str, joined: pd.DataFrame, scores: list[str]) -> None:
    """MLflow's pyfunc of the registered model returns the score columns of the predictions table, equal to them,
    and its output signature names them (so ``spark_udf`` returns them as a struct)."""
    loaded = mlflow.pyfunc.load_model(model_uri)
    inputs = loaded.metadata.get_input_schema()
    outputs = loaded.metadata.get_output_schema()
    assert inputs is not None and outputs is not None and outputs.input_names() == scores
    sample = joined.head(25).reset_index(drop=True)
    predicted = loaded.predict(sample[inputs.input_names()])
    assert list(predicted.columns) == scores
    for column in scores:
        if sample[column].dtype == object:
            assert list(predicted[column]) == list(sample[column])
        else:
            assert list(predicted[column]) == pytest.approx(list(sample[column]), abs=1e-9)


def _evaluate_run(client: MlflowClient, name: str) -> mlflow.entities.Run:
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`deltaml.step` = 'evaluate'", max_results=1
    )
    return run


# Real tables have column names Delta refuses without column mapping (a space, parentheses) and
# characters MLflow refuses in a param key (the euro sign): two of the penguins' columns get such names.
AWKWARD = {"bill_length_mm": "bill length (mm)", "island": "île €"}


def _awkward_names(conf: Path) -> Path:
    data = yaml.safe_load(conf.read_text())
    data["source"]["rename"].update(AWKWARD)
    features = data["features"]
    features["numeric"] = [AWKWARD.get(c, c) for c in features["numeric"]]
    features["categorical"] = [AWKWARD.get(c, c) for c in features["categorical"]]
    data["contract"]["columns"] = {AWKWARD.get(c, c): v for c, v in data["contract"]["columns"].items()}
    return write_config(conf, data)


def test_multiclass_penguins_train_register_and_score(spark: SparkSession, tmp_path: Path) -> None:
    assert main(["run", str(_awkward_names(_conf(tmp_path, "penguin_species.yml")))]) == 0
    state = tmp_path / "state" / "warehouse"
    raw = spark.read.format("delta").load(str(state / "bronze/penguins"))
    assert set(AWKWARD.values()) <= set(raw.columns)
    client = MlflowClient()
    champion = client.get_model_version_by_alias("penguin_species", "champion")
    joined = _test_rows_with_predictions(
        spark, state, "silver/penguins_split", "gold/penguin_species_predictions", "penguin_id"
    )
    # The champion's registered test metrics (tags with six decimals), recomputed by scikit-learn
    # from the predictions table.
    assert len(joined) > 50
    assert set(joined["predicted_label"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    classes = ["Adelie", "Chinstrap", "Gentoo"]
    assert (joined["predicted_label"] == [classes[int(i)] for i in joined["prediction"]]).all()
    assert float(champion.tags["metric.test_accuracy"]) == pytest.approx(
        accuracy_score(joined["species"], joined["predicted_label"]), abs=TAG
    )
    assert float(champion.tags["metric.test_f1"]) == pytest.approx(
        f1_score(joined["species"], joined["predicted_label"], average="weighted"), abs=TAG
    )
    assert float(champion.tags["metric.test_f1"]) > 0.9
    assert ((joined["probability"] > 1 / 3) & (joined["probability"] <= 1)).all()
    evaluate = _evaluate_run(client, "deltaml-penguin-species")
    # Every labelled penguin is of a configured class: none left out of the metrics.
    assert (
        evaluate.data.metrics["validation_rows_unknown_class"] == evaluate.data.metrics["test_rows_unknown_class"] == 0
    )
    report = _report_files(client, evaluate.info.run_id)
    assert {"confusion_matrix.png", "report.html", "metrics.json"} <= report
    _assert_the_rendered_report(evaluate.info.run_id, "penguin_species", "species (multiclass)", "accuracy")
    winner = _assert_the_winner_reads_its_own_vector(f"models:/penguin_species/{champion.version}", 4, 2)
    _assert_pyfunc_gives_the_stored_scores(
        f"models:/penguin_species/{champion.version}", joined, ["probability", "prediction", "predicted_label"]
    )
    print(f"penguins winner: {winner}")
    pipeline = client.get_run(str(evaluate.data.tags["mlflow.parentRunId"]))
    assert pipeline.data.params["contract.columns.île _x20ac_.type"] == "string"


@pytest.mark.usefixtures("restore_cli_logging")
def test_regression_diamonds_train_register_and_score(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _conf(tmp_path, "diamond_prices.yml")
    data = yaml.safe_load(conf.read_text())
    data["source"]["filter"] = "diamond_id % 20 = 0"  # 2,697 diamonds keep the test small
    data["tuning"]["refit_on"] = "train_validation"
    write_config(conf, data)
    assert main(["run", str(conf)]) == 0
    # The refit saw the validation rows: the lines say so (before: "fitted on <train rows>" and a plain
    # "validation RMSE", an in-sample score that read like an estimate).
    log = capsys.readouterr().err
    split_rows = spark.read.format("delta").load(str(tmp_path / "state" / "warehouse" / "silver/diamonds_split"))
    counts = {r["split"]: r["count"] for r in split_rows.groupBy("split").count().collect()}
    assert f"tuned on {counts['train']} train rows, refitted on {counts['train'] + counts['validation']} " in log, log
    assert re.search(r"\[evaluate\] done in .*validation RMSE [0-9.]+ \(in-sample: the model was refitted", log), log
    state = tmp_path / "state" / "warehouse"
    client = MlflowClient()
    champion = client.get_model_version_by_alias("diamond_prices", "champion")
    joined = _test_rows_with_predictions(
        spark, state, "silver/diamonds_split", "gold/diamond_price_predictions", "diamond_id"
    )
    assert len(joined) > 300
    assert "probability" not in joined.columns
    errors = joined["prediction"] - joined["price"]
    assert float(champion.tags["metric.test_rmse"]) == pytest.approx(float(np.sqrt((errors**2).mean())), abs=TAG)
    assert float(champion.tags["metric.test_mae"]) == pytest.approx(
        mean_absolute_error(joined["price"], joined["prediction"]), abs=TAG
    )
    assert float(champion.tags["metric.test_r2"]) == pytest.approx(
        r2_score(joined["price"], joined["prediction"]), abs=TAG
    )
    assert float(champion.tags["metric.test_r2"]) > 0.9
    evaluate_run = _evaluate_run(client, "deltaml-diamond-prices").info.run_id
    report = _report_files(client, evaluate_run)
    assert {"residuals.png", "predicted_vs_actual.png", "report.html"} <= report
    _assert_the_rendered_report(evaluate_run, "diamond_prices", "price (regression)", "rmse")
    # Seven numeric features (log_carat derived) and cut, color and clarity as one slot each.
    winner = _assert_the_winner_reads_its_own_vector(f"models:/diamond_prices/{champion.version}", 10, 3)
    _assert_pyfunc_gives_the_stored_scores(f"models:/diamond_prices/{champion.version}", joined, ["prediction"])
    print(f"diamonds winner: {winner}")
