"""Prediction files: the interface between the runner, cv, ensembles and submissions.

Layout per source (a candidate or an ensemble) under runs/NAME/:
  fold_K/oof.csv   fname,summary of the rows held out in fold K (out-of-fold)
  fold_K/test.csv  fname,summary of the test set by the fold-K model
  fold_K/dev.csv   fname,summary of dev when dev is a hold-out (not inside the folds)
  fold_K/meta.json config hash, data and folds sha256, timings, versions
  test.csv         the source's chosen test output (MBR over folds, or a refit), in test order
  dev.csv          its chosen dev output (when dev is a hold-out)
  meta.json        how those were made

Every file is written to a temporary file and renamed, so a killed run never leaves a half file
that looks complete; meta.json is written last, so a fold counts as done only when it exists.
"""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pandas as pd

from ..errors import DataError, UnknownCandidate
from ..files import atomic_write_csv, atomic_write_json

RUNS_DIR = "runs"
_FOLD_DIR = re.compile(r"^fold_(\d+)$")


def run_dir(config, name: str) -> Path:
    """runs/NAME in the workspace."""
    return config.resolve(RUNS_DIR) / name


def fold_dir(config, name: str, fold: int) -> Path:
    return run_dir(config, name) / f"fold_{int(fold)}"


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A fname,summary CSV as strings (empty summaries stay "")."""
    path = Path(path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "fname" not in frame.columns or "summary" not in frame.columns:
        raise DataError(f"{path}: expected columns fname,summary (has {', '.join(frame.columns)}); "
                        f"re-run the source that wrote it with --force")
    return frame[["fname", "summary"]]


def read_meta(path: str | Path) -> dict | None:
    """meta.json as a dict, or None when absent or unreadable (a fold that is not done)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def done_folds(config, name: str) -> list[int]:
    """Folds of `name` with an oof.csv and a meta.json (meta is written last)."""
    folder = run_dir(config, name)
    if not folder.is_dir():
        return []
    folds = []
    for child in folder.iterdir():
        match = _FOLD_DIR.match(child.name)
        if match and (child / "oof.csv").exists() and (child / "meta.json").exists():
            folds.append(int(match.group(1)))
    return sorted(folds)


def list_sources(config) -> list[str]:
    """Names under runs/ with at least one finished fold or a chosen test output, sorted."""
    root = config.resolve(RUNS_DIR)
    if not root.is_dir():
        return []
    names = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and (done_folds(config, child.name) or (child / "test.csv").exists()):
            names.append(child.name)
    return names


def _require_source(config, name: str) -> Path:
    folder = run_dir(config, name)
    if not folder.is_dir():

        close = difflib.get_close_matches(name, list_sources(config), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownCandidate(f"no predictions for {name!r} under {folder.parent}{hint}: "
                               f"run `competition run {name}` (or `competition ensemble {name}`) first")
    return folder


def load_oof(config, name: str) -> pd.DataFrame:
    """Every finished fold's out-of-fold rows: DataFrame(fname, fold, summary), fold order."""
    _require_source(config, name)
    frames = []
    for fold in done_folds(config, name):
        frame = read_predictions(fold_dir(config, name, fold) / "oof.csv")
        frames.append(frame.assign(fold=fold)[["fname", "fold", "summary"]])
    if not frames:
        raise UnknownCandidate(f"{name!r} has no finished fold under {run_dir(config, name)}: "
                               f"run `competition run {name}`")
    return pd.concat(frames, ignore_index=True)


def load_fold_outputs(config, name: str, split: str) -> dict[int, pd.DataFrame]:
    """{fold: DataFrame(fname, summary)} of each finished fold's `split` ("test" or "dev") predictions."""
    _require_source(config, name)
    out = {}
    for fold in done_folds(config, name):
        path = fold_dir(config, name, fold) / f"{split}.csv"
        if path.exists():
            out[fold] = read_predictions(path)
    return out


def load_fold_test(config, name: str) -> dict[int, pd.DataFrame]:
    """{fold: DataFrame(fname, summary)} of each finished fold's test predictions."""
    return load_fold_outputs(config, name, "test")


def load_fold_dev(config, name: str) -> dict[int, pd.DataFrame]:
    """{fold: DataFrame(fname, summary)} of each finished fold's dev predictions (hold-out dev)."""
    return load_fold_outputs(config, name, "dev")


def load_test(config, name: str) -> pd.DataFrame:
    """The source's chosen test output runs/NAME/test.csv: DataFrame(fname, summary)."""
    path = _require_source(config, name) / "test.csv"
    if not path.exists():
        raise UnknownCandidate(f"{path} not found: finish `competition run {name}` (all folds) "
                               f"so its test output is chosen")
    return read_predictions(path)


def load_dev(config, name: str) -> pd.DataFrame | None:
    """The source's chosen dev output runs/NAME/dev.csv, or None when there is none."""
    path = _require_source(config, name) / "dev.csv"
    return read_predictions(path) if path.exists() else None


def load_meta(config, name: str, fold: int | None = None) -> dict | None:
    """runs/NAME/meta.json, or fold_K/meta.json with `fold`."""
    folder = run_dir(config, name) if fold is None else fold_dir(config, name, fold)
    return read_meta(folder / "meta.json")


def _frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["fname", "summary"]]


def write_fold(config, name: str, fold: int, oof: pd.DataFrame, test: pd.DataFrame | None,
               dev: pd.DataFrame | None, meta: dict) -> Path:
    """Write runs/NAME/fold_K/{oof,test,dev}.csv then meta.json (last: it marks the fold done)."""
    folder = fold_dir(config, name, fold)
    (folder / "meta.json").unlink(missing_ok=True)
    atomic_write_csv(folder / "oof.csv", _frame(oof))
    for split, frame in (("test", test), ("dev", dev)):
        if frame is not None:
            atomic_write_csv(folder / f"{split}.csv", _frame(frame))
        else:
            (folder / f"{split}.csv").unlink(missing_ok=True)
    atomic_write_json(folder / "meta.json", {**meta, "fold": int(fold)})
    return folder


def write_source_outputs(config, name: str, test: pd.DataFrame | None, dev: pd.DataFrame | None,
                         meta: dict) -> Path:
    """Write runs/NAME/{test,dev}.csv and runs/NAME/meta.json (the chosen outputs)."""
    folder = run_dir(config, name)
    for split, frame in (("test", test), ("dev", dev)):
        if frame is not None:
            atomic_write_csv(folder / f"{split}.csv", _frame(frame))
        else:
            (folder / f"{split}.csv").unlink(missing_ok=True)
    atomic_write_json(folder / "meta.json", meta)
    return folder
