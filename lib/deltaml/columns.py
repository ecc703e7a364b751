"""Names deltaml owns: reserved columns, MLflow tag keys, artifact paths, split and alias names.

Ground layer: imports nothing from deltaml, so executor-side code (UDFs, saved stages) can use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


TAG_KEY = "deltaml.step_key"


TAG_FINGERPRINT = "deltaml.fingerprint"


TAG_RECORD = "deltaml.cache"


TAG_CACHED_FROM = "deltaml.cached_from"


# Where a CSV line that does not parse under the contract's types keeps its text.
CORRUPT_RECORD = "_corrupt_record"


VIOLATIONS_COL = "_violations"


WARNINGS_COL = "_warnings"


FEATURES_COL = "features"


CHAMPION = "champion"


CHALLENGER = "challenger"


HISTORY_TAG = "deltaml.promotion_history"


PROMOTED_AT_TAG = "deltaml.promoted_at"


ROLLED_BACK_AT_TAG = "deltaml.rolled_back_at"


INGEST_BATCH_COL = "_ingest_batch_id"


INGESTED_AT_COL = "_ingested_at"


INGEST_COLUMNS = (INGEST_BATCH_COL, INGESTED_AT_COL)


MANIFEST_ARTIFACT = "manifest.json"


STEP_LINEAGE_ARTIFACT = "lineage.json"


# The columns the score step writes with every prediction that say where it came from (scoring.score_frame).
PREDICTION_LINEAGE_COLUMNS = ("batch_id", "model_name", "model_version", "source_table", "source_version", "scored_at")


LABEL_COL = "_label"


WEIGHT_COL = "_weight"


PROBABILITY_COL = "probability"


PREDICTION_COL = "prediction"


PREDICTED_LABEL_COL = "predicted_label"


PROFILE_ARTIFACT = "monitoring/reference_profile.json"


TAG_REPRODUCES = "deltaml.reproduces"


BATCH_COL = "batch_id"


# A 64-bit hash of the key and every column the model reads: how a later run knows a row is already scored.
INPUT_HASH_COL = "input_hash"


RAW_PREDICTION_COL = "rawPrediction"


SPLIT_COL = "split"


TRAIN, VALIDATION, TEST = "train", "validation", "test"


TAG_PIPELINE = "deltaml.pipeline"


TAG_STEP = "deltaml.step"


TAG_CONFIG_HASH = "deltaml.config_hash"


TAG_GIT_SHA = "deltaml.git_sha"


TAG_VERSION = "deltaml.version"


MODEL_ARTIFACT = "model"


QUARANTINED_AT_COL = "_quarantined_at"


REPORT_JSON = "validation/report.json"


REPORT_HTML = "validation/report.html"
