"""``deltaml init``: profile a sample of a data set and write a starter pipeline config, checked by the loader.

Decide, then act: the source is recognised and the output checked before Spark starts; the profile
(:mod:`deltaml.quality.source_profile`) feeds the rules of :mod:`deltaml.config.scaffold`; the text is
loaded with deltaml's own config loader before it is written, so a written config always loads, and a
failure writes nothing.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deltaml.config.loader import load_config
from deltaml.config.scaffold import ConfigPlan, SourceSpec, check_label, plan_config, render_config
from deltaml.config.schema import PipelineConfig, SparkConfig
from deltaml.errors import ConfigError, StepFailedError
from deltaml.io.catalog import csv_separator, read_source, source_for
from deltaml.io.session import get_spark
from deltaml.quality.source_profile import profile_sample

LOG = logging.getLogger(__name__)

DEFAULT_SAMPLE_ROWS = 100_000
SCHEMA_IN_REPO = Path("docs") / "reference" / "deltaml.schema.json"
SCHEMA_BESIDE = "deltaml.schema.json"


@dataclass(frozen=True)
class InitResult:
    """What ``deltaml init`` wrote and decided."""

    path: Path
    plan: ConfigPlan
    text: str

    def summary(self) -> str:
        """One paragraph for the console: where, the label's task, the key, the features, the exclusions."""
        plan, label = self.plan, self.plan.label
        what = f"positive {label.positive!r}" if label.positive is not None else f"{len(label.classes or [])} classes"
        if label.task == "regression":
            what = "numeric"
        excluded = plan.role("excluded")
        lines = [
            f"wrote {self.path}: {label.task} label {label.column} ({what}), key {plan.key}, "
            f"{len(plan.role('numeric'))} numeric and {len(plan.role('categorical'))} categorical features"
            + (f", {len(excluded)} column(s) left out: {', '.join(excluded)}" if excluded else ""),
            f"check it: deltaml check-config {self.path}; run it: deltaml run {self.path} --env local",
        ]
        return "\n".join(lines)


def default_name(target: str) -> str:
    """A pipeline name from a path: its last part without the extension, in letters, digits and ``_``."""
    stem = Path(target.rstrip("/")).name
    stem = stem.split(".")[0] if "." in stem else stem
    name = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_").lower()
    return name or "pipeline"


def schema_reference(output: Path) -> str:
    """The ``$schema`` path the config's first line names, relative to the config's folder.

    Inside a checkout of the deltaml repository (a parent folder holds docs/reference/deltaml.schema.json),
    that published schema, as the shipped configs name it. Elsewhere, ``deltaml.schema.json`` beside the
    config, which ``deltaml schema --output <folder>/deltaml.schema.json`` writes.
    """
    folder = output.resolve().parent
    for parent in [folder, *folder.parents]:
        if (parent / SCHEMA_IN_REPO).is_file():
            return Path(os.path.relpath(parent / SCHEMA_IN_REPO, folder)).as_posix()
    return SCHEMA_BESIDE


def init_config(
    target: str,
    label: str,
    output: str | Path | None = None,
    name: str | None = None,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    force: bool = False,
) -> InitResult:
    """Write a starter pipeline config for ``target`` with label ``label``, inferred from a sample.

    Args:
        target: A CSV or Parquet file or folder, or a Delta table's folder.
        label: The label column.
        output: Where to write the YAML (default ``conf/<name>.yml``).
        name: The pipeline's name (default: from ``target``'s file or folder name).
        sample_rows: The most rows profiled.
        force: Overwrite an existing ``output``.

    Returns:
        Where it was written, the plan and the text.

    Raises:
        ConfigError: Bad arguments (no such input, label not a column, output exists without ``force``).
        StepFailedError: The generated text did not load (a bug of these rules; nothing is written).
    """
    name = name or default_name(target)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"deltaml init: --name {name!r} must be letters, digits, '_' or '-'")
    if sample_rows < 1:
        raise ConfigError(f"deltaml init: --sample-rows must be at least 1, got {sample_rows}")
    path = Path(output) if output is not None else Path("conf") / f"{name}.yml"
    if path.exists() and not force:
        raise ConfigError(f"deltaml init: {path} exists; pass --force to overwrite it, or --output another path")
    if path.is_dir():
        raise ConfigError(f"deltaml init: --output {path} is a folder; give a file path such as {path / name}.yml")
    source = source_for(target)
    spark = get_spark(_session_config(name))
    if source.kind == "csv":
        assert source.path is not None
        sep = csv_separator(spark, source.path)
        options = {"header": "true", **({"sep": sep} if sep else {})}
        source = source.model_copy(update={"options": options})
    df = read_source(spark, source, fingerprint=False).df
    check_label(df.columns, label)
    LOG.info("profiling up to %d rows of %s", sample_rows, target)
    profile = profile_sample(df, sample_rows)
    assert source.path is not None
    spec = SourceSpec(kind=source.kind, path=source.path, options=dict(source.options))  # type: ignore[arg-type]
    plan = plan_config(profile, spec, label, name)
    text = render_config(plan, schema_reference(path))
    _check_loads(text, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return InitResult(path=path, plan=plan, text=text)


def _session_config(name: str) -> PipelineConfig:
    """What :func:`get_spark` reads of a config (name, state dir, spark section), before the config exists."""
    return PipelineConfig.model_construct(name=f"init-{name}", state_dir=".deltaml", spark=SparkConfig())


def _check_loads(text: str, name: str) -> None:
    """Load the text with deltaml's config loader, from a temporary file; raise if it does not load."""
    with tempfile.TemporaryDirectory(prefix="deltaml-init-") as folder:
        candidate = Path(folder) / f"{name}.yml"
        candidate.write_text(text, encoding="utf-8")
        try:
            load_config(candidate)
        except ConfigError as exc:
            raise StepFailedError(
                f"deltaml init: the generated config does not load ({exc}); this is a bug of deltaml init, "
                "please report it with the data's column types"
            ) from exc
