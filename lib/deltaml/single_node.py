"""Moved to :mod:`deltaml.ml.single_node`; this name stays because saved Spark ML models name their stages' module."""

from deltaml.ml.single_node import *  # noqa: F403
