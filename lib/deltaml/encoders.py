"""Moved to :mod:`deltaml.ml.encoders`; this name stays because saved Spark ML models name their stages' module."""

from deltaml.ml.encoders import *  # noqa: F403
