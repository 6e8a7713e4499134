"""progress: bars only on a terminal; elsewhere one line per stage that never runs into the next."""
from __future__ import annotations

import io
import sys

from competition.progress import StageLine, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_stage_is_one_line_with_count_and_rate(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress(range(5), desc="score", unit="rows")) == [0, 1, 2, 3, 4]
    with progress(total=3, desc="mbr pairs", unit="pairs") as bar:
        bar.update(2)
        bar.update(1)
        bar.set_postfix_str("2 retrying")
    lines = err.getvalue().split("\n")
    assert "\r" not in err.getvalue()  # a bar's carriage returns ran into the next line of a log file
    assert lines[0].startswith("score: 5 rows in ") and "rows/s" in lines[0]
    assert lines[1].startswith("mbr pairs: 3 pairs in ") and lines[1].endswith("; 2 retrying")
    assert lines[2:] == [""]


def test_a_terminal_gets_a_bar_and_disabled_progress_says_nothing(monkeypatch):
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert not isinstance(progress(range(3), desc="cv"), StageLine)  # tqdm
    for _ in progress(range(3), desc="cv", unit="sources"):
        pass
    assert "cv" in err.getvalue() and "\r" in err.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert list(progress(range(3), desc="x", enabled=False)) == [0, 1, 2] and quiet.getvalue() == ""
