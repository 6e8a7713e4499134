"""The digests results are keyed by: a settings value's short hash (what a run depends on) and a
file's sha256. A leaf: provenance, training, tune and ensembles all hash the same way."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any


def config_hash(value: Any) -> str:
    """A stable short hash of a dataclass or plain value (what a run depends on)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
