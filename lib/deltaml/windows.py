"""Moved to :mod:`deltaml.ml.windows`; this name stays because saved Spark ML models name their stages' module."""

from deltaml.ml.windows import *  # noqa: F403
