"""Moved to :mod:`deltaml.ml.models`; this name stays because saved Spark ML models name their stages' module."""

from deltaml.ml.models import *  # noqa: F403
