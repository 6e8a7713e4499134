"""Prediction files: atomic writes (the old file kept when a write fails, synced before the
rename) and missing summaries written as empty fields."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import write_workspace

from competition.files import atomic_write_text
from competition.workspace.config import load_config


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    import os

    target = tmp_path / "runs" / "x" / "oof.csv"
    atomic_write_text(target, "fname,summary\na,old\n")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_text(target, "fname,summary\na,new\n")
    assert target.read_text() == "fname,summary\na,old\n"
    assert [p.name for p in target.parent.iterdir()] == ["oof.csv"]


def test_atomic_write_syncs_the_file_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic_write_text(tmp_path / "meta.json", "{}\n")
    assert events == ["fsync", "replace"] and (tmp_path / "meta.json").read_text() == "{}\n"


def test_missing_summaries_are_written_as_empty_fields_not_none_or_nan(tmp_path):
    """A candidate or ensemble frame with None/NaN/NA summaries: the files hold "", while a summary
    that really says "None" keeps its text."""
    from competition.data.predictions import fold_dir, read_predictions, write_fold

    config = load_config(write_workspace(tmp_path, pd.DataFrame(columns=["fname", "dialogue", "summary"]),
                                         pd.DataFrame(columns=["fname", "dialogue"])) / "competition.toml")
    oof = pd.DataFrame({"fname": ["a", "b", "c", "d", "e"],
                        "summary": pd.Series([None, np.nan, pd.NA, "None", "요약, 하나"], dtype=object)})
    test = pd.DataFrame({"fname": ["t"], "summary": [np.nan]})  # a float column, as pandas makes it
    write_fold(config, "x", 0, oof, test, None, {"name": "x"})
    folder = fold_dir(config, "x", 0)
    assert (folder / "oof.csv").read_text(encoding="utf-8") == 'fname,summary\na,\nb,\nc,\nd,None\ne,"요약, 하나"\n'
    assert read_predictions(folder / "oof.csv")["summary"].tolist() == ["", "", "", "None", "요약, 하나"]
    assert (folder / "test.csv").read_text(encoding="utf-8") == "fname,summary\nt,\n"

