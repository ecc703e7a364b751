"""Quality reference: scikit-learn's logistic regression on exactly deltaml's Telco train/test split.

Run after `make demo`:  .venv/bin/python benchmarks/telco_reference.py [STATE_DIR]
Prints the test AUC-ROC of both. (A benchmark script, so it may collect the small demo table.)
"""

from __future__ import annotations

import sys

from mlflow.tracking import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from deltaml.config.loader import load_config
from deltaml.io.catalog import read_table
from deltaml.io.session import get_spark
from deltaml.io.tracking import configure_tracking
from deltaml.steps.base import StepContext


def main(argv: list[str]) -> int:
    overrides = [f"state_dir={argv[0]}"] if argv else []
    loaded = load_config("conf/telco_churn.yml", env="local", overrides=overrides)
    cfg = loaded.pipeline
    spark = get_spark(cfg)
    split, version = read_table(spark, StepContext(spark, loaded).tables.split, "reference")
    data = split.toPandas()
    y = (data[cfg.label.column] == cfg.label.positive).astype(int)
    train, test = data["split"] == "train", data["split"] == "test"
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), cfg.features.numeric),
                ("cat", OneHotEncoder(handle_unknown="ignore"), cfg.features.categorical),
            ]
        ),
        LogisticRegression(max_iter=1000),
    )
    model.fit(data.loc[train, cfg.features.columns], y[train])
    sk_auc = roc_auc_score(y[test], model.predict_proba(data.loc[test, cfg.features.columns])[:, 1])
    configure_tracking(cfg)
    champion = MlflowClient().get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
    print(f"split table v{version}: {int(train.sum())} train rows, {int(test.sum())} test rows")
    print(f"scikit-learn LogisticRegression test AUC-ROC: {sk_auc:.4f}")
    print(f"deltaml champion v{champion.version} test AUC-ROC:     {float(champion.tags['metric.test_auc_roc']):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
