"""Moved to :mod:`deltaml.ml.cleaning`; this name stays because saved Spark ML models name their stages' module."""

from deltaml.ml.cleaning import *  # noqa: F403
