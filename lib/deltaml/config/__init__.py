"""The typed pipeline config (``schema``) and how it is read (``loader``): YAML, overlays, ``--set``, ``${VAR}``."""

from __future__ import annotations

from deltaml.config.loader import LoadedConfig, load_config
from deltaml.config.schema import PipelineConfig

__all__ = ["LoadedConfig", "PipelineConfig", "load_config"]
