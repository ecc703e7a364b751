"""Moved to :mod:`deltaml.ml.selection`; this name stays because saved Spark ML models name their stages' module."""

from deltaml.ml.selection import *  # noqa: F403
