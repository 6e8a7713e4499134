"""Candidate kinds. A kind is one module with a `Params` dataclass and a `Candidate` subclass.

Kinds are imported lazily so `competition --help` never loads torch.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import ConfigError

# Modules of this package that are not kinds: the interface.
_NOT_KINDS = {"base"}
# kind -> module that defines `Params` and `CANDIDATE`: every other module of this package, named
# after its kind (adding a kind is adding its file), plus kinds registered from elsewhere.
KINDS = {info.name: f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__)
         if info.name not in _NOT_KINDS and not info.name.startswith("_")}


def register_kind(kind: str, module: str) -> None:
    """Make `kind` available from `module` (an importable name defining Params and CANDIDATE):
    a kind kept outside this package, e.g. a team's own or a test's."""
    KINDS[kind] = module


def kind_names() -> list[str]:
    """Every kind's name, this package's and the registered ones."""
    return list(KINDS)


def kind_module(kind: str):
    if kind not in KINDS:
        raise ConfigError(f"unknown candidate kind {kind!r}: choose one of {', '.join(KINDS)}")
    try:
        return importlib.import_module(KINDS[kind])
    except ModuleNotFoundError as error:
        if error.name and error.name == KINDS[kind]:
            raise ConfigError(f"candidate kind {kind!r} is not available in this version") from None
        raise


def params_class(kind: str) -> type:
    """The dataclass of a kind's parameters (what its [candidates.NAME] table may hold)."""
    return kind_module(kind).Params


def candidate_class(kind: str) -> type:
    return kind_module(kind).CANDIDATE
