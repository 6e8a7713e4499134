"""A dialogue's turns: `#Person1#: text` lines split into (speaker, text), and the first N turns
written back (lead's summary, and the fallback of model kinds when a generation comes back empty)."""
from __future__ import annotations

import re

_TURN = re.compile(r"^\s*(#[A-Za-z][A-Za-z0-9]*#)\s*:\s*(.*)$")


def split_turns(dialogue: str) -> list[tuple[str, str]]:
    """(speaker tag, text) per turn; a line without a tag continues the previous turn."""
    turns: list[tuple[str, str]] = []
    for line in dialogue.split("\n"):
        match = _TURN.match(line)
        if match:
            turns.append((match.group(1), match.group(2).strip()))
        elif line.strip():
            if turns:
                speaker, text = turns[-1]
                turns[-1] = (speaker, f"{text} {line.strip()}".strip())
            else:
                turns.append(("", line.strip()))
    return turns


def lead_text(dialogue: str, turns: int, turn_format: str = "{speaker}: {text}", joiner: str = " ") -> str:
    """The first `turns` turns of a dialogue, each written with `turn_format`."""
    written = []
    for speaker, text in split_turns(dialogue)[:turns]:
        written.append(turn_format.format(speaker=speaker, text=text).strip() if speaker else text)
    return joiner.join(written)
