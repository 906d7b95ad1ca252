"""The docs quote the configuration's real defaults, the README stays short, and links lead somewhere.

A default is quoted in one of three ways, each checked against ``Settings``:

* a row of a table whose header starts ``| key | default |``: ``| `batch_size` | `32` | ... |``;
* in prose, ``` `batch_size` (default `32`) ```;
* a code span of a key and a value, ``` `batch_size 32` ```, as the old benchmark notes wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cened.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
# Checked for links only: CHANGELOG.md quotes the defaults of its day on purpose.
LINKED = [*DOCS, ROOT / "CHANGELOG.md", ROOT / "models" / "README.md"]
README_MAX_LINES = 250

# Defaults that depend on where cened runs, quoted as a user reads them, not as a value:
COMPUTED = {
    "quarantine": "quoted as <library>/_quarantine: None in Settings, resolved from library",
    "model": "the model shipped in the wheel or the checkout: a path that depends on the install",
}
# Quoted with ~ (and $XDG_STATE_HOME unset): checked against settings made with HOME elsewhere.
HOME_PATHS = {"inbox", "library", "database"}

FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PROSE_DEFAULT = re.compile(r"`(\w+)`\s*\(default\s+`([^`]*)`")
KEY_VALUE_SPAN = re.compile(r"`(\w+) ([^`\s=]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class Claim:
    where: str
    key: str
    quoted: str | None  # None: the row's keys and defaults cannot be paired


def _prose(text: str) -> str:
    """The text with fenced code blocks blanked out, line numbers kept."""
    out, fenced = [], False
    for line in text.split("\n"):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table_claims(prose: str, name: str) -> Iterator[Claim]:
    in_defaults = False
    for number, line in enumerate(prose.split("\n"), 1):
        if not line.lstrip().startswith("|"):
            in_defaults = False
            continue
        cells = _cells(line)
        if [c.lower() for c in cells[:2]] == ["key", "default"]:
            in_defaults = True
            continue
        if not in_defaults or set(cells[0]) <= set("-: "):
            continue
        keys, values = CODE_SPAN.findall(cells[0]), CODE_SPAN.findall(cells[1])
        where = f"{name}:{number}"
        if len(keys) != len(values):
            for key in keys:
                yield Claim(where, key, None)
            continue
        for key, value in zip(keys, values, strict=True):
            yield Claim(where, key, value)


def default_claims(text: str, name: str = "<text>") -> list[Claim]:
    """Every default the markdown ``text`` quotes, in the three forms above."""
    prose = _prose(text)
    claims = list(_table_claims(prose, name))
    fields = set(Settings.model_fields)

    def line_of(match: re.Match[str]) -> str:
        return f"{name}:{prose.count(chr(10), 0, match.start()) + 1}"

    claims += [Claim(line_of(m), m[1], m[2]) for m in PROSE_DEFAULT.finditer(prose)]
    claims += [Claim(line_of(m), m[1], m[2]) for m in KEY_VALUE_SPAN.finditer(prose) if m[1] in fields]
    return claims


def _same(actual: object, quoted: str) -> bool:
    if isinstance(actual, bool):
        return quoted == str(actual).lower()
    if isinstance(actual, int | float):
        try:
            return float(quoted) == actual
        except ValueError:
            return False
    if isinstance(actual, str):  # StrEnum included; "" is quoted as `""`
        return quoted in (actual, f'"{actual}"')
    return quoted == str(actual)


def problems(claims: list[Claim], settings: Settings, home: Path) -> list[str]:
    """What the claims get wrong about ``settings`` (made with ``HOME=home``)."""
    found = []
    for claim in claims:
        key, quoted = claim.key, claim.quoted
        if key not in Settings.model_fields:
            found.append(f"{claim.where}: `{key}` is no configuration key")
        elif key in COMPUTED:
            continue
        elif quoted is None:
            found.append(f"{claim.where}: `{key}`'s default cannot be told apart from the others in its row")
        elif key in HOME_PATHS:
            if Path(quoted.replace("~", str(home), 1)) != getattr(settings, key):
                found.append(f"{claim.where}: `{key}` defaults to {getattr(settings, key)}, not {quoted}")
        elif not _same(getattr(settings, key), quoted):
            found.append(f"{claim.where}: `{key}` defaults to {getattr(settings, key)!r}, not {quoted}")
    return found


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A HOME of its own and no CENED_* variables, so the settings are the packaged defaults."""
    import os

    for name in list(os.environ):
        if name.startswith("CENED_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_the_docs_quote_the_configurations_defaults(home: Path) -> None:
    settings = load_settings()
    claims = [c for doc in DOCS for c in default_claims(doc.read_text(encoding="utf-8"), doc.name)]
    readme_keys = {c.key for c in claims if c.where.startswith("README.md:")}
    # The parser must keep finding the README's table, or this test proves nothing.
    assert {"batch_size", "model_batch_size", "confidence_threshold", "inbox"} <= readme_keys
    assert problems(claims, settings, home) == []


def test_a_stale_or_misspelt_default_is_caught(home: Path) -> None:
    text = "\n".join(
        [
            "| key | default | meaning |",
            "| --- | --- | --- |",
            "| `batch_size` | `16` | photos per micro-batch |",
            "| `confidence_treshold` | `0.6` | a typo |",
            "| `inbox` | `~/Photos/inbox` | moved |",
            "",
            "Calls of `model_batch_size` (default `2`); `decode_threads 2` is right.",
            "```toml",
            "batch_size = 4  # a code block: an example, not a claim",
            "```",
        ]
    )
    found = problems(default_claims(text), load_settings(), home)
    assert len(found) == 4, found
    assert any("`batch_size` defaults to 32, not 16" in p for p in found)
    assert any("confidence_treshold" in p for p in found)
    assert any("`model_batch_size` defaults to 8, not 2" in p for p in found)
    assert any("`inbox`" in p for p in found)


def test_the_readme_stays_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; details belong in docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = CODE_SPAN.sub(r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in _prose(doc.read_text(encoding="utf-8")).split("\n"):
        if match := re.match(r"#{1,6}\s+(.+)", line):
            slug = _slug(match[1])
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


@pytest.mark.parametrize("doc", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings(doc: Path) -> None:
    text = CODE_SPAN.sub("", _prose(doc.read_text(encoding="utf-8")))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no such heading")
    assert broken == []
