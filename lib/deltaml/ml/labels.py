"""The label as models learn it: encoded per task, its classes, and the labelled rows of a split."""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.columns import LABEL_COL, SPLIT_COL, TRAIN
from deltaml.config.schema import PipelineConfig
from deltaml.errors import StepInputError
from deltaml.ml.models import (
    encode_label,
    label_text,
)

# More classes than this is a mislabelled task (a numeric column), not a classifier to train.
MAX_CLASSES = 1000


def with_binary_label(label: str, positive: Any) -> Any:
    """Return a transform adding ``_label``: 1.0 where ``label`` equals the positive value, else 0.0."""

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn(LABEL_COL, F.when(F.col(label) == F.lit(positive), 1.0).otherwise(0.0))

    return transform


def labelled_rows(data: DataFrame, config: PipelineConfig, *splits: str, classes: list[str] | None = None) -> DataFrame:
    """The rows of ``splits`` whose label is known, with the numeric ``_label`` the models learn.

    Binary: 0/1; multiclass: the index of the label in ``classes`` (rows of other labels are
    left out); regression: the label as a double.
    """
    rows = (
        data.where(F.col(SPLIT_COL).isin(*splits))
        .where(F.col(config.label.column).isNotNull())
        .withColumn(LABEL_COL, encode_label(config.label, classes))
        .where(F.col(LABEL_COL).isNotNull())
    )
    if config.label.task == "multiclass" and classes:
        # Spark ML sizes a classifier's output from this (not from the largest label it sees), so a
        # class absent from train still gets its slot in the probability vector.
        nominal = {"ml_attr": {"type": "nominal", "num_vals": len(classes), "name": LABEL_COL}}
        rows = rows.withMetadata(LABEL_COL, nominal)
    return rows


def _labelled_split(
    data: DataFrame, config: PipelineConfig, *splits: str, classes: list[str] | None = None
) -> DataFrame:
    return labelled_rows(data, config, *splits, classes=classes).select(*config.features.columns, LABEL_COL)


def label_classes(data: DataFrame, config: PipelineConfig) -> list[str] | None:
    """A multiclass label's classes: the configured ones, or the train split's distinct labels, sorted."""
    label = config.label
    if label.task != "multiclass":
        return None
    if label.classes is not None:
        return [label_text(c) for c in label.classes]
    rows = (
        data.where((F.col(SPLIT_COL) == TRAIN) & F.col(label.column).isNotNull())
        .select(F.col(label.column).cast("string").alias("c"))
        .distinct()
        .limit(MAX_CLASSES + 1)
        .collect()
    )
    if len(rows) > MAX_CLASSES:
        raise StepInputError(
            f"step 'fit': label {label.column} has more than {MAX_CLASSES} distinct values in the train split; "
            "a multiclass label needs a handful of classes (is it a number? then use task: regression)"
        )
    if len(rows) < 2:
        raise StepInputError(
            f"step 'fit': the train split has {len(rows)} distinct value(s) of {label.column}; "
            "a multiclass label needs at least two (check the split and label.column)"
        )
    return sorted(str(r["c"]) for r in rows)
