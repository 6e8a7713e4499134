"""Candidate kinds. A kind is one module with a `Params` dataclass and a `Candidate` subclass.

Kinds are imported lazily so `competition --help` never loads torch.
"""
from __future__ import annotations

import importlib

from ..errors import ConfigError

# kind -> module under competition.candidates; the module defines `Params` and `CANDIDATE`.
KINDS = {
    "lead": "lead",
    "retrieval": "retrieval",
    "qlora": "qlora",
    "seq2seq": "seq2seq",
    "prompt": "prompt",
    "api": "api",
}


def kind_module(kind: str):
    if kind not in KINDS:
        raise ConfigError(f"unknown candidate kind {kind!r}: choose one of {', '.join(KINDS)}")
    try:
        return importlib.import_module(f"{__name__}.{KINDS[kind]}")
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith(f"{__name__}."):
            raise ConfigError(f"candidate kind {kind!r} is not available in this version") from None
        raise


def params_class(kind: str) -> type:
    """The dataclass of a kind's parameters (what its [candidates.NAME] table may hold)."""
    return kind_module(kind).Params


def candidate_class(kind: str) -> type:
    return kind_module(kind).CANDIDATE
