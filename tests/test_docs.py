"""The docs: generated reference pages are current, every config field is described, the README stays short,
and every relative link resolves. Plain Python: no Spark session, no network."""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel, ConfigDict

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "docs" / "generate_reference.py"
README = ROOT / "README.md"
README_MAX_LINES = 250

# A fenced code block (``` or ~~~) and an inline code span: links inside them are not links.
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _load_generator() -> ModuleType:
    """docs/ is not a package: load docs/generate_reference.py by path."""
    spec = importlib.util.spec_from_file_location("deltaml_docs_generate_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def generated(generator: ModuleType) -> dict[Path, str]:
    return generator.generated()


def _markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _without_code(text: str) -> str:
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces to -)."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken_links(path: Path) -> list[str]:
    broken = []
    for target in _LINK.findall(_without_code(path.read_text(encoding="utf-8"))):
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}: ({target})"
        if not resolved.exists():
            broken.append(f"{where} -> {file_part} does not exist")
        elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
            broken.append(f"{where} -> no heading with anchor #{fragment} in {resolved.relative_to(ROOT)}")
    return broken


@pytest.mark.parametrize("name", ["configuration.md", "cli.md", "deltaml.schema.json"])
def test_reference_page_matches_what_the_code_generates(generated: dict[Path, str], name: str) -> None:
    path = ROOT / "docs" / "reference" / name
    expected = generated[path]
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current != expected:
        diff = difflib.unified_diff(
            current.splitlines(), expected.splitlines(), "committed", "generated", lineterm="", n=1
        )
        pytest.fail(
            f"docs/reference/{name} is stale: it differs from what docs/generate_reference.py generates from "
            f"the code; run `make docs` and commit the result.\n" + "\n".join(list(diff)[:40])
        )


def test_every_config_field_has_a_description(generator: ModuleType) -> None:
    missing = generator.undocumented_fields()
    assert not missing, (
        f"config fields without a description: {missing}; add a docstring under each field in "
        "lib/deltaml/config/schema.py, then run `make docs`"
    )


class _Inner(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    described: int = 1
    """Has a description."""
    bare: int = 2


class _Outer(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    inner: list[_Inner] = []
    """Nested models are walked too."""
    by_key: dict[str, _Inner] = {}
    """So are mappings of models."""


def test_a_field_without_a_docstring_is_reported_as_undocumented(generator: ModuleType) -> None:
    assert generator.undocumented_fields(_Outer) == ["_Inner.bare"]
    assert generator.config_models(_Outer) == {_Outer: [""], _Inner: ["inner[]", "by_key.<key>"]}


def test_the_configuration_reference_links_nested_models_and_renders_types(generator: ModuleType) -> None:
    from deltaml.config.schema import PipelineConfig

    assert generator.render_type(PipelineConfig.model_fields["contract"].annotation) == (
        "[ContractConfig](#contractconfig) \\| `null`"
    )
    text = generator.render_configuration()
    assert "| `register` | [RegisterConfig](#registerconfig) | `{}` |" in text  # the alias, not the field name
    assert '| `method` | `"quantile"` \\| `"iqr"` | `"quantile"` |' in text
    assert "| `lower_quantile` | `float` | `0.01` | >= 0, < 0.5 |" in text
    assert "| `columns` | `list[str]` | required | at least 1 item(s) |" in text


def test_check_names_a_stale_page_and_exits_1(
    generator: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    monkeypatch.setattr(generator, "CONFIG_REFERENCE", tmp_path / "configuration.md")
    monkeypatch.setattr(generator, "CLI_REFERENCE", tmp_path / "cli.md")
    monkeypatch.setattr(generator, "CONFIG_SCHEMA", tmp_path / "deltaml.schema.json")
    assert generator.main([]) == 0
    (tmp_path / "cli.md").write_text("old\n", encoding="utf-8")

    assert generator.main(["--check"]) == 1
    assert "cli.md is stale" in capsys.readouterr().err
    assert (tmp_path / "cli.md").read_text(encoding="utf-8") == "old\n"  # --check writes nothing
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0


def test_readme_stays_under_250_lines() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move detail to docs/"
    )


def test_relative_links_in_readme_and_docs_resolve() -> None:
    broken = [problem for path in _markdown_files() for problem in _broken_links(path)]
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Title\n\n## Some part\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#some-part) [gone](missing.md) [no anchor](a.md#nope) `[code](missing.md)` "
        "[web](https://example.com/x.md)\n```\n[fenced](missing.md)\n```\n",
        encoding="utf-8",
    )

    assert _broken_links(page) == [
        "b.md: (missing.md) -> missing.md does not exist",
        "b.md: (a.md#nope) -> no heading with anchor #nope in a.md",
    ]
