"""deltaml: a declarative YAML file in, a Spark ML pipeline on Delta Lake and MLflow out."""

from deltaml._version import __version__

__all__ = ["__version__"]
