"""A logged model with a single-node stage loads and scores where Python has no deltaml, workers included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deltaml.columns import LABEL_COL, TREE_FEATURES_COL
from deltaml.config.schema import FeaturesConfig
from deltaml.io import flavor
from deltaml.io.models import model_requirements, model_signature, package_folder
from deltaml.ml.features import build_feature_stages, tree_layout
from deltaml.ml.single_node import FAMILY_PACKAGES, fit_single_node

pytestmark = pytest.mark.slow

# Runs in the fresh environment: Spark's driver and its Python workers both use that interpreter.
SCORE = """
import json, logging, sys
import mlflow.pyfunc, mlflow.spark
import pandas as pd
from pyspark.sql import SparkSession

logging.basicConfig(level=logging.WARNING)
logging.getLogger("deltaml").setLevel(logging.INFO)
spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
path, rows = sys.argv[1], pd.read_parquet(sys.argv[2])
pyfunc = mlflow.pyfunc.load_model(path).predict(rows)
scored = mlflow.spark.load_model(path).transform(spark.createDataFrame(rows)).orderBy("id").collect()
import deltaml  # by now: the copy MLflow put on the driver's path from the model's code folder
print(json.dumps({
    "pyfunc_columns": list(pyfunc.columns),
    "pyfunc": pyfunc.to_dict(orient="list"),
    "probability": [float(r["probability"][1]) for r in scored],
    "deltaml": deltaml.__file__,
}))
"""


def _fresh_python(folder: Path) -> Path:
    """A venv that sees this environment's libraries (pyspark, mlflow, scikit-learn) but not deltaml.

    Its ``.pth`` line puts the site-packages folder on ``sys.path`` without processing the ``.pth``
    files in it, so deltaml's editable install is not importable there.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_a_single_node_model_scores_in_an_environment_whose_workers_lack_deltaml(
    spark: SparkSession, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    rows = 400
    frame = pd.DataFrame(
        {
            "id": np.arange(rows),
            "x1": rng.normal(size=rows),
            "x2": rng.normal(size=rows),
            "c": rng.choice(["a", "b", "c", "d"], size=rows),
        }
    )
    frame[LABEL_COL] = ((frame["x1"] > 0) ^ frame["c"].isin(["b", "d"])).astype(float)
    data = spark.createDataFrame(frame)
    features = FeaturesConfig.model_validate({"numeric": ["x1", "x2"], "categorical": ["c"]})
    fitted = Pipeline(stages=build_feature_stages(features, tree_features=True)).fit(data)
    stage = fit_single_node(
        spark,
        fitted.transform(data),
        "hist_gradient_boosting",
        "binary",
        {"max_iter": 30},
        seed=0,
        max_rows=10_000,
        features_col=TREE_FEATURES_COL,
        categorical=tree_layout(features)[1],
    )
    model = PipelineModel(stages=[*fitted.stages, stage])
    inputs = data.select("id", "x1", "x2", "c")
    path = tmp_path / "model"
    flavor.save_model(
        model,
        str(path),
        signature=model_signature(inputs, ["id", "x1", "x2", "c"], "binary"),
        pip_requirements=model_requirements(FAMILY_PACKAGES["hist_gradient_boosting"]),
        code_paths=[str(package_folder(tmp_path))],
    )
    expected = model.transform(inputs).orderBy("id").select("prediction", F.col("probability")).collect()
    python = _fresh_python(tmp_path / "fresh")
    lacks = subprocess.run([str(python), "-c", "import deltaml"], capture_output=True, text=True, cwd=tmp_path)
    assert lacks.returncode != 0 and "No module named 'deltaml'" in lacks.stderr
    sample = tmp_path / "rows.parquet"  # exact doubles (JSON would round the ones near a split)
    frame.drop(columns=[LABEL_COL]).to_parquet(sample)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "SPARK_REMOTE", "PYTHONPATH"))}
    environment.update(PYSPARK_PYTHON=str(python), PYSPARK_DRIVER_PYTHON=str(python))

    done = subprocess.run(
        [str(python), "-c", SCORE, str(path), str(sample)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=600,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["deltaml"].startswith(str(path / "code"))
    # MLflow's pyfunc gives the scores deltaml's predictions table has (the rows keep their order).
    assert result["pyfunc_columns"] == ["probability", "prediction"]
    assert result["pyfunc"]["prediction"] == [r["prediction"] for r in expected]
    assert result["pyfunc"]["probability"] == pytest.approx([r["probability"][1] for r in expected], abs=1e-12)
    assert result["probability"] == pytest.approx([r["probability"][1] for r in expected], abs=1e-12)
    assert "sent its code to the executors" in done.stderr


def test_a_single_node_model_pins_the_learner_it_needs_where_it_is_loaded() -> None:
    from importlib.metadata import version

    pins = {name: f"{name}=={version(name)}" for name in ("pyspark", "mlflow", "scikit-learn", "lightgbm")}
    assert model_requirements() == [pins["pyspark"], pins["mlflow"]]
    assert model_requirements(FAMILY_PACKAGES["hist_gradient_boosting"])[2:] == [pins["scikit-learn"]]
    assert model_requirements(FAMILY_PACKAGES["lightgbm"])[2:] == [pins["scikit-learn"], pins["lightgbm"]]
