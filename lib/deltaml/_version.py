"""The package version, read by setup.py and recorded in every MLflow run."""

__version__ = "0.1.0"
