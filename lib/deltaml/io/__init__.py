"""Adapters to the outside: Spark sessions, Delta tables, MLflow tracking and registry, lineage recording.

The only layer that talks to Spark sessions, Delta and MLflow directly; classic sessions and
Spark Connect differ here only.
"""
