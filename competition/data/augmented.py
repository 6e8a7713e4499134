"""Augmented rows as the folds see them: a file written by `competition augment` read back, and the
rows a fold may train on. Every augmented row remembers its `source_fname`; a fold trains on it
only when its source row is in that fold's training set (synthetic rows, with no source, always),
so an augmented copy of a held-out dialogue can never inflate CV."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from ..errors import DataError

AUGMENTED_COLUMNS = ["fname", "source_fname", "augmentation", "dialogue", "summary", "topic"]


def read_augmented(path: str | Path) -> pd.DataFrame:
    """An augmentation file written by `competition augment` (validated)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"augmentation file {path} not found: make it with `competition augment ... --out {path}`")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in AUGMENTED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(AUGMENTED_COLUMNS)}")
    frame = frame[AUGMENTED_COLUMNS].copy()
    frame.attrs["path"] = str(path)  # names the file in fold_training_rows' errors
    return frame


def _file_of(frame: pd.DataFrame, position: int) -> str:
    return frame.attrs.get("path", f"augmentation file {position + 1}")


def check_unique_fnames(reserved: dict[str, Iterable[str]], augmented: Sequence[pd.DataFrame]) -> None:
    """Raise DataError naming the fname and both places when an augmented fname repeats one of
    `reserved` ({"the training data": fnames, ...}) or another augmented row (a silently dropped
    or doubled row would change what trains, or what a prediction file's fname means)."""
    owner = {fname: place for place, fnames in reserved.items() for fname in fnames}
    for position, frame in enumerate(augmented):
        here = _file_of(frame, position)
        for fname in frame["fname"]:
            if fname in owner:
                where = f"twice in {here}" if owner[fname] == here else f"in both {owner[fname]} and {here}"
                raise DataError(f"augmented fname {fname!r} is {where}: every row needs its own fname; "
                                f"write each augmentation to its own --out file (fnames follow the file name)")
            owner[fname] = here


def fold_training_rows(train_rows: pd.DataFrame, augmented: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """A fold's training rows plus the augmented rows it may see: those whose source row is in
    `train_rows` and synthetic rows (no source). Never a row derived from a held-out dialogue."""
    check_unique_fnames({"the training data": train_rows["fname"]}, augmented)
    allowed = set(train_rows["fname"])
    parts = [train_rows]
    for frame in augmented:
        usable = frame[(frame["source_fname"] == "") | frame["source_fname"].isin(allowed)]
        parts.append(usable[["fname", "dialogue", "summary", "topic"]])
    return pd.concat(parts, ignore_index=True)
