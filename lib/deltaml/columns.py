"""Names deltaml owns: reserved columns, MLflow tag keys, artifact paths, split and alias names.

Ground layer: imports nothing from deltaml, so executor-side code (UDFs, saved stages) can use it.
Every name another system sees (a table column, a tag, an artifact) is written here once.
"""

from __future__ import annotations

# -- columns deltaml adds to tables it owns ------------------------------------------------------------------
INGEST_BATCH_COL = "_ingest_batch_id"
INGESTED_AT_COL = "_ingested_at"
# A 128-bit hash of a row's source columns (two 64-bit hashes, hex): how ``ingest.mode: append`` knows a source row is
# already in the raw table (or was dropped with its batch).
INGEST_ROW_HASH_COL = "_ingest_row_hash"
INGEST_COLUMNS = (INGEST_BATCH_COL, INGESTED_AT_COL, INGEST_ROW_HASH_COL)
# The dropped-batches table (``deltaml batches drop|quarantine``): when and why each batch left the raw table.
DROPPED_AT_COL = "_dropped_at"
DROP_REASON_COL = "_drop_reason"
DROP_ACTION_COL = "_drop_action"
# The violation a row of a batch quarantined whole (``deltaml batches quarantine``) carries in the quarantine table.
BATCH_QUARANTINED = "batch.quarantined"
# Where a CSV line that does not parse under the contract's types keeps its text.
CORRUPT_RECORD = "_corrupt_record"
VIOLATIONS_COL = "_violations"
WARNINGS_COL = "_warnings"
QUARANTINED_AT_COL = "_quarantined_at"
SPLIT_COL = "split"
TRAIN, VALIDATION, TEST = "train", "validation", "test"

# -- columns of the model pipeline (Spark ML's own names where Spark ML has one) -----------------------------
LABEL_COL = "_label"
WEIGHT_COL = "_weight"
FEATURES_COL = "features"
# What tree families that split categories natively read: numeric columns unscaled, each categorical column as its
# frequency rank (0 the most frequent level) instead of one-hot slots.
TREE_FEATURES_COL = "tree_features"
RAW_PREDICTION_COL = "rawPrediction"
PROBABILITY_COL = "probability"
PREDICTION_COL = "prediction"
PREDICTED_LABEL_COL = "predicted_label"

# -- the predictions table: each prediction with where it came from --------------------------------------------
BATCH_COL = "batch_id"
MODEL_NAME_COL = "model_name"
MODEL_VERSION_COL = "model_version"
SOURCE_TABLE_COL = "source_table"
# The input's Delta table id: it stays with the table when its folder is copied or moved, so predictions are matched
# to their input by it (``source_table``, the path or name read, is for people). Null in rows written before.
SOURCE_TABLE_ID_COL = "source_table_id"
SOURCE_VERSION_COL = "source_version"
SCORED_AT_COL = "scored_at"
# A 64-bit hash of the key and every column the model reads: how a later run knows a row is already scored.
INPUT_HASH_COL = "input_hash"
# The columns the score step writes with every prediction that say where it came from (score_frame); also
# SOURCE_TABLE_ID_COL, which predictions tables written before it was added do not have.
PREDICTION_LINEAGE_COLUMNS = (
    BATCH_COL,
    MODEL_NAME_COL,
    MODEL_VERSION_COL,
    SOURCE_TABLE_COL,
    SOURCE_VERSION_COL,
    SCORED_AT_COL,
)

# -- MLflow run tags ------------------------------------------------------------------------------------------
TAG_PIPELINE = "deltaml.pipeline"
TAG_STEP = "deltaml.step"
TAG_CONFIG_HASH = "deltaml.config_hash"
TAG_GIT_SHA = "deltaml.git_sha"
TAG_VERSION = "deltaml.version"
TAG_CONFIG_FILES = "deltaml.config_files"
TAG_MODEL_URI = "deltaml.model_uri"
TAG_KEY = "deltaml.step_key"
# The step's cache key, set when the step starts (TAG_KEY only when it finishes): a fit that dies is found by it, and
# the next fit with the same key resumes from its logged trials.
TAG_ATTEMPT_KEY = "deltaml.attempt_key"
TAG_FINGERPRINT = "deltaml.fingerprint"
TAG_RECORD = "deltaml.cache"
TAG_CACHED_FROM = "deltaml.cached_from"
# host:pid:start of the process that opened a run: a later run on that host closes it as KILLED once that
# process is gone (kill -9, a lost driver), instead of leaving it RUNNING for ever.
TAG_PROCESS = "deltaml.process"
TAG_REUSED_STEPS = "deltaml.reused_steps"
TAG_REPRODUCES = "deltaml.reproduces"
# A step result's own tags are logged as ``deltaml.<name>`` (StepResult.tags).
TAG_PREFIX = "deltaml."
# Tuning trials: each a nested run of the fit step.
TRIAL_STEP = "trial"
TAG_FAMILY = "deltaml.family"
TAG_ERROR = "deltaml.error"
TAG_TRIAL_METRIC = "deltaml.trial_metric"
# A trial a resumed search took from the fit run that died (its id) instead of training it again.
TAG_RESUMED_FROM = "deltaml.resumed_from"
TAG_TRIAL_HOST = "deltaml.trial_host"
TAG_TRIAL_PID = "deltaml.trial_pid"
TAG_TRIAL_TASK_ATTEMPT = "deltaml.trial_task_attempt"
TAG_TRIAL_WORKDIR = "deltaml.trial_workdir"
# Retraining decisions, on the run of ``deltaml retrain``.
TAG_RETRAIN_ACTION = "deltaml.retrain_action"
TAG_RETRAIN_REASONS = "deltaml.retrain_reasons"

# -- MLflow model version tags (lineage of a registered version) ----------------------------------------------
TAG_TRAINING_TABLE = "deltaml.training_table"
TAG_TRAINING_TABLE_VERSION = "deltaml.training_table_version"
TAG_RAW_TABLE = "deltaml.raw_table"
TAG_GATE = "deltaml.gate"
# A registered version's test metrics, one tag each: ``metric.test_auc_roc``.
METRIC_TAG_PREFIX = "metric."

# -- MLflow registry: aliases and registered-model tags -------------------------------------------------------
CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "deltaml.promotion_history"
PROMOTED_AT_TAG = "deltaml.promoted_at"
ROLLED_BACK_AT_TAG = "deltaml.rolled_back_at"

# -- MLflow artifacts -----------------------------------------------------------------------------------------
MODEL_ARTIFACT = "model"
MANIFEST_ARTIFACT = "manifest.json"
STEP_LINEAGE_ARTIFACT = "lineage.json"
PROFILE_ARTIFACT = "monitoring/reference_profile.json"
REPORT_JSON = "validation/report.json"
REPORT_HTML = "validation/report.html"
