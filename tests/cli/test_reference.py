"""docs/reference.md is generated from the commands and the config dataclasses, and must be current."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from competition.cli.reference import field_comments, reference_markdown

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def test_the_reference_is_current():
    assert REFERENCE.read_text(encoding="utf-8") == reference_markdown(), \
        "docs/reference.md is out of date: run .venv/bin/python -m competition.cli.reference docs/reference.md"


def test_every_key_of_every_kind_has_a_meaning():
    from competition.candidates import KINDS, params_class
    from competition.workspace.config import SECTIONS

    for cls in [*SECTIONS.values(), *(params_class(kind) for kind in KINDS)]:
        comments = field_comments(cls)
        missing = [item.name for item in dataclasses.fields(cls) if not comments.get(item.name)]
        assert not missing, f"{cls.__module__}.{cls.__name__}: no comment beside {missing}"


def test_a_new_field_makes_the_committed_reference_stale(monkeypatch):
    """A Params field added without regenerating fails the first test: the generated text gains the
    field's row (default and comment), and nothing else changes."""
    from competition.candidates import lead

    @dataclasses.dataclass
    class Wider(lead.Params):
        new_knob: int = 3  # a knob added later

    before = reference_markdown()
    monkeypatch.setattr(lead, "Params", Wider)
    after = reference_markdown()
    row = "| `new_knob` | `3` | a knob added later |\n"
    assert row in after and after.replace(row, "") == before
