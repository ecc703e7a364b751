"""The reference profile a model is monitored against: its train features and test predictions."""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.columns import PREDICTED_LABEL_COL, PREDICTION_COL, PROBABILITY_COL, PROFILE_ARTIFACT
from deltaml.config.schema import PipelineConfig
from deltaml.errors import StepInputError, one_line
from deltaml.io.registry import version_run_id
from deltaml.io.tracking import load_run_json, log_dict_to, mlflow_client
from deltaml.quality.drift import CategoricalProfile, NumericProfile, Profile, build_profile

# The feature name under which the predictions' own drift is recorded.
PREDICTIONS_FEATURE = "__predictions__"


WINDOW_FEATURE = "*"


def prediction_column(task: str) -> str:
    """The predictions-table column whose distribution is monitored: the positive-class probability
    (binary), the predicted label (multiclass) or the predicted value (regression)."""
    return {"multiclass": PREDICTED_LABEL_COL, "regression": PREDICTION_COL}.get(task, PROBABILITY_COL)


def reference_profile(cfg: PipelineConfig, train_rows: DataFrame, predictions: DataFrame) -> dict[str, Any]:
    """The profile stored with a model: its train rows' features and its test predictions.

    Args:
        cfg: The pipeline config (features, task, ``monitor.top_k``).
        train_rows: The train split, with the columns the model reads.
        predictions: Test predictions with the column :func:`prediction_column` names.
    """
    column = prediction_column(cfg.label.task)
    numeric, categorical = _feature_kinds(cfg)
    features = build_profile(as_profiled(train_rows, cfg), numeric, categorical, top_k=cfg.monitor.top_k)
    kind = ([], [column]) if cfg.label.task == "multiclass" else ([column], [])
    scores = build_profile(predictions.select(column), kind[0], kind[1], top_k=cfg.monitor.top_k)
    return {"version": 1, "features": features.to_dict(), "predictions": scores.to_dict(), "prediction_column": column}


def _feature_kinds(cfg: PipelineConfig) -> tuple[list[str], list[str]]:
    return list(cfg.features.numeric), list(cfg.features.categorical)


def as_profiled(rows: DataFrame, cfg: PipelineConfig) -> DataFrame:
    """The monitored columns as the profile reads them: numeric features as doubles (a value that is not
    a number becomes null, as the model's type coercion does), categorical features as they are."""
    numeric, categorical = _feature_kinds(cfg)
    return rows.select(
        *[F.col(f"`{c}`").try_cast("double").alias(c) for c in numeric], *[F.col(f"`{c}`") for c in categorical]
    )


def log_reference_profile(run_id: str, profile: dict[str, Any]) -> None:
    """Store the profile with the model's MLflow run (as ``monitoring/reference_profile.json``)."""
    log_dict_to(run_id, profile, PROFILE_ARTIFACT)


def load_reference_profile(name: str, version: int) -> tuple[Profile, Profile, str]:
    """The feature profile, the prediction profile and the prediction column of a registered version.

    Raises:
        StepInputError: The version does not exist or its run has no profile (trained before deltaml stored one).
    """
    client = mlflow_client()
    try:
        run_id = version_run_id(client, name, version)
        if run_id is None:
            raise OSError("the version has no MLflow run")
        data = load_run_json(client, run_id, PROFILE_ARTIFACT)
    except (MlflowException, OSError) as exc:
        first = one_line(exc, 200)
        raise StepInputError(
            f"step 'monitor': {name} version {version} has no reference profile ({first}); "
            "train a new version with this deltaml (`deltaml run CONF`) to monitor it"
        ) from None
    return Profile.from_dict(data["features"]), Profile.from_dict(data["predictions"]), str(data["prediction_column"])


def current_shares(profile: NumericProfile | CategoricalProfile, current: DataFrame) -> tuple[list[str], list[float]]:
    """The current rows' shares over the reference's bins (numeric) or categories (categorical), in one job."""
    column = F.col(f"`{current.columns[0]}`")
    if isinstance(profile, NumericProfile):
        value = column.cast("double")
        value = F.when(F.isnan(value), None).otherwise(value)
        edges = profile.edges
        labels = [f"<= {edges[0]:.4g}"] if edges else ["all"]
        labels += [f"{edges[i - 1]:.4g} .. {edges[i]:.4g}" for i in range(1, len(edges))]
        labels += [f"> {edges[-1]:.4g}"] if edges else []
        bucket = F.lit(len(edges))
        for i in reversed(range(len(edges))):
            bucket = F.when(value <= F.lit(edges[i]), F.lit(i)).otherwise(bucket)
        counts = {
            r["b"]: int(r["n"])
            for r in current.where(value.isNotNull())
            .groupBy(bucket.alias("b"))
            .count()
            .withColumnRenamed("count", "n")
            .collect()
        }
        total = sum(counts.values()) or 1
        return labels, [counts.get(i, 0) / total for i in range(len(labels))]
    categories = list(profile.counts)
    text = column.cast("string")
    known = [c for c in categories if c != "__other__"]
    mapped = F.when(text.isin(known), text).otherwise(F.lit("__other__"))
    counts = {
        r["c"]: int(r["n"])
        for r in current.where(text.isNotNull())
        .groupBy(mapped.alias("c"))
        .count()
        .withColumnRenamed("count", "n")
        .collect()
    }
    total = sum(counts.values()) or 1
    if "__other__" not in categories and counts.get("__other__"):
        categories.append("__other__")
    return categories, [counts.get(c, 0) / total for c in categories]


def reference_shares(profile: NumericProfile | CategoricalProfile, size: int) -> list[float]:
    """The reference's shares over the same bins or categories as :func:`current_shares` (padded to ``size``)."""
    counts = profile.bin_counts if isinstance(profile, NumericProfile) else list(profile.counts.values())
    total = sum(counts) or 1
    shares = [c / total for c in counts]
    return shares + [0.0] * (size - len(shares))
