"""Spark ML: cleaning and feature stages, model families, single-node learners, tuning, metrics."""
