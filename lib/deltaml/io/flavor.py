"""deltaml's MLflow flavor: a Spark model whose pyfunc returns the scores, not only the prediction.

A model deltaml logs is an MLflow Spark model: ``mlflow.spark.load_model`` gives its PipelineModel, as
for any Spark model. Only its ``python_function`` flavor loads through this module instead of
``mlflow.spark``, whose pyfunc returns the ``prediction`` column alone. Here ``predict`` returns a
pandas DataFrame with the columns deltaml's predictions table has (see :func:`score_columns`):

* binary: ``probability`` (of the positive class) and ``prediction`` (0/1 at the model's threshold);
* multiclass: ``probability`` (of the predicted class), ``prediction`` (class index), ``predicted_label``;
* regression: ``prediction``.

The model's output signature names the same columns, so ``mlflow.pyfunc.spark_udf`` returns them
as a struct. The module is loaded from the model's own ``code/`` folder where deltaml is not
installed, so it imports only pyspark, mlflow and deltaml's ground layer; MLflow only where it is
used, so the Spark ML stages that build their columns here (``positive_probability``) import no
MLflow.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column
from pyspark.sql import functions as F

from deltaml.columns import PREDICTED_LABEL_COL, PREDICTION_COL, PROBABILITY_COL

if TYPE_CHECKING:
    from mlflow.models import Model
    from mlflow.types.schema import Schema

_PYFUNC = "python_function"


def positive_probability(probability_col: str = PROBABILITY_COL) -> Column:
    """The positive class's probability: slot 1 of a model's probability vector, as a double column."""
    return vector_to_array(F.col(probability_col))[1]


def score_columns(task: str) -> list[Column]:
    """The score columns of a scored frame, as deltaml's predictions table and pyfunc output have them."""
    if task == "multiclass":
        return [
            F.array_max(vector_to_array(F.col(PROBABILITY_COL))).alias(PROBABILITY_COL),
            F.col(PREDICTION_COL),
            F.col(PREDICTED_LABEL_COL),
        ]
    if task == "regression":
        return [F.col(PREDICTION_COL)]
    return [positive_probability().alias(PROBABILITY_COL), F.col(PREDICTION_COL)]


def score_schema(task: str) -> Schema:
    """The output signature: the columns :func:`score_columns` gives, with their MLflow types."""
    from mlflow.types.schema import ColSpec, Schema

    specs = {
        "binary": [ColSpec("double", PROBABILITY_COL), ColSpec("double", PREDICTION_COL)],
        "multiclass": [
            ColSpec("double", PROBABILITY_COL),
            ColSpec("double", PREDICTION_COL),
            ColSpec("string", PREDICTED_LABEL_COL),
        ],
        "regression": [ColSpec("double", PREDICTION_COL)],
    }[task]
    return Schema(specs)  # type: ignore[arg-type]


def task_of(columns: list[str]) -> str:
    """The task of a model from the columns its output has (a multiclass model names its labels)."""
    if PREDICTED_LABEL_COL in columns:
        return "multiclass"
    return "binary" if PROBABILITY_COL in columns else "regression"


def save_model(spark_model: Any, path: str, mlflow_model: Model | None = None, **kwargs: Any) -> None:
    """MLflow's ``save_model`` of this flavor: the Spark flavor's, with the pyfunc loader pointed here."""
    import mlflow.spark
    from mlflow.models import Model
    from mlflow.pyfunc import MAIN as LOADER_MODULE

    mlflow_model = mlflow_model or Model()
    mlflow.spark.save_model(spark_model, path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors[_PYFUNC][LOADER_MODULE] = __name__
    mlflow_model.save(os.path.join(path, "MLmodel"))


class ScoresModel:
    """The pyfunc implementation: MLflow's Spark pyfunc wrapper, returning the score columns."""

    def __init__(self, spark_pyfunc: Any) -> None:
        self._inner = spark_pyfunc  # its .spark is the session, its .spark_model the PipelineModel

    def get_raw_model(self) -> Any:
        return self._inner.spark_model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        scored = self._inner.spark_model.transform(self._inner.spark.createDataFrame(model_input))
        return scored.select(*score_columns(task_of(scored.columns))).toPandas()


def _load_pyfunc(path: str, model_config: Any = None) -> ScoresModel:
    """MLflow's pyfunc loader hook: ``path`` is the model's ``sparkml`` folder."""
    import mlflow.spark

    return ScoresModel(mlflow.spark._load_pyfunc(path))
