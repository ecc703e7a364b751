"""Spark ML models as MLflow models: signature, bundled code, pip requirements."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.spark
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from deltaml.columns import MODEL_ARTIFACT
from deltaml.errors import SetupError, StepInputError
from deltaml.io import flavor
from deltaml.io.session import is_connect

_MLFLOW_TYPES = {
    T.IntegerType: "integer",
    T.LongType: "long",
    T.ShortType: "integer",
    T.ByteType: "integer",
    T.FloatType: "float",
    T.DoubleType: "double",
    T.StringType: "string",
    T.BooleanType: "boolean",
    T.DateType: "datetime",
    T.TimestampType: "datetime",
    T.TimestampNTZType: "datetime",
    T.DecimalType: "double",
}


def model_signature(df: DataFrame, columns: list[str], task: str) -> ModelSignature:
    """The model's signature: every column the model reads, required, with its type from the Spark schema;
    out, the score columns of ``task`` (:func:`deltaml.io.flavor.score_schema`)."""
    fields = {f.name: f for f in df.schema.fields}
    specs: list[ColSpec | TensorSpec] = []
    for column in columns:
        mlflow_type = _MLFLOW_TYPES.get(type(fields[column].dataType))
        if mlflow_type is None:
            raise StepInputError(f"step 'fit': column '{column}' has unsupported type {fields[column].dataType}")
        specs.append(ColSpec(mlflow_type, column))
    return ModelSignature(inputs=Schema(specs), outputs=flavor.score_schema(task))


def package_folder(scratch: Path) -> Path:
    """deltaml's own folder, for a logged model's ``code_paths``.

    Under spark-submit the package is imported from the ``--py-files`` .zip, where MLflow cannot
    copy it from; it is then extracted from the archive into ``scratch`` first.
    """
    package = Path(__file__).resolve().parents[1]  # this file is deltaml/io/models.py
    if package.is_dir():
        return package
    archive = next((p for p in package.parents if p.is_file() and zipfile.is_zipfile(p)), None)
    if archive is None:
        raise StepInputError(f"step 'fit': cannot find the deltaml package folder or archive of {package}")
    inner = package.relative_to(archive).as_posix()
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(scratch, [n for n in zipped.namelist() if n.startswith(f"{inner}/")])
    return scratch / inner


def model_requirements(packages: Sequence[str] = ()) -> list[str]:
    """The pip requirements of a logged Spark model, pinned to what trained it.

    pyspark and mlflow, and ``packages`` (a single-node stage's learner: scikit-learn, LightGBM).
    Giving them explicitly spares MLflow its requirement inference, which re-imports the model in
    a subprocess and costs ~15 s per logged model.
    """
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in ("pyspark", "mlflow", *packages)]


# Where MLflow's Spark flavor puts the Spark ML model inside an MLflow model folder.
_SPARK_MODEL_FOLDER = "sparkml"


def _dfs_tmp() -> str:
    """MLflow's ``MLFLOW_DFS_TMP``: the folder a Spark model passes through between Spark and the client."""
    return os.environ.get("MLFLOW_DFS_TMP", "/tmp/mlflow")


def _shared_folder(path: str) -> Path:
    """A path Spark wrote (``file:/...`` or ``/...``) as a local folder this process can read, or one clear error."""
    local = Path(path.removeprefix("file:"))
    if not local.is_dir():
        raise SetupError(
            f"the Spark Connect server saved the model to {path}, which this process cannot read; set MLFLOW_DFS_TMP "
            "to a folder the server and this process both see (on Databricks a /Volumes/... path)"
        )
    return local


@contextmanager
def _connect_model_files(spark: Any) -> Iterator[None]:
    """Let MLflow's Spark flavor save a model over Spark Connect.

    The flavor has the Spark model written to ``MLFLOW_DFS_TMP`` and copies it into the MLflow
    model folder through the JVM's Hadoop file system, which a Connect client does not have; on
    Databricks it reads a /Volumes path through the FUSE mount instead. Here the copy is a move of
    a folder the server and this process share (a local server, or a mounted volume).
    """
    if spark is None or not is_connect(spark):
        yield
        return
    hadoop = mlflow.spark._HadoopFileSystem
    original = hadoop.__dict__["copy_to_local_file"]

    def copy_to_local_file(_cls: Any, src: str, dst: str, remove_src: bool) -> None:
        source = _shared_folder(src)
        shutil.copytree(source, dst)
        if remove_src:
            shutil.rmtree(source, ignore_errors=True)

    # MLflow then checks the input example by loading the model through the JVM, which fails here
    # with a warning; deltaml loads and scores every logged model in its evaluate step anyway.
    checker = logging.getLogger("mlflow.models.model")
    level = checker.level
    hadoop.copy_to_local_file = classmethod(copy_to_local_file)
    checker.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hadoop.copy_to_local_file = original
        checker.setLevel(level)


def load_spark_model(uri: str) -> PipelineModel:
    """A logged or registered Spark ML model (``runs:/...``, ``models:/NAME/VERSION``) as a PipelineModel.

    Over Spark Connect the model's files are downloaded to ``MLFLOW_DFS_TMP`` (a folder the server
    must see too) and the server loads them from there.
    """
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is None or not is_connect(spark):
        model: PipelineModel = mlflow.spark.load_model(uri)
        return model
    base = Path(_dfs_tmp())
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="deltaml-model-", dir=base) as scratch:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri.rstrip('/')}/{_SPARK_MODEL_FOLDER}", dst_path=scratch
        )
        return PipelineModel.load(str(local))


def registered_model_uri(name: str, version: int) -> str:
    """The MLflow URI of a registered model version."""
    return f"models:/{name}/{version}"


def log_spark_model(
    model: PipelineModel,
    *,
    signature: ModelSignature,
    input_example: Any,
    pip_requirements: list[str],
    code_paths: list[str],
) -> str:
    """Log a fitted PipelineModel from the active run as an MLflow LoggedModel named :data:`MODEL_ARTIFACT`.

    Returns its model URI (``models:/m-...``). The model is listed in the experiment's Models tab,
    with the run as its source; its flavors are MLflow's Spark flavor and deltaml's pyfunc
    (:mod:`deltaml.io.flavor`), whose ``predict`` returns the probability beside the prediction.
    """
    from pyspark.sql import SparkSession

    with _connect_model_files(SparkSession.getActiveSession()):
        info = Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=flavor,
            spark_model=model,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            code_paths=code_paths,
        )
    return str(info.model_uri)


def model_run_id(uri: str) -> str | None:
    """The run that logged the model at ``uri`` (``runs:/RUN/...``, ``models:/m-...``), or None."""
    if uri.startswith("runs:/"):
        return uri.removeprefix("runs:/").split("/", 1)[0]
    if uri.startswith("models:/m-"):
        model_id = uri.removeprefix("models:/").split("/", 1)[0]
        return mlflow.MlflowClient().get_logged_model(model_id).source_run_id
    return None
