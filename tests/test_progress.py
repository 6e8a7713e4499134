"""progress: bars only on a terminal; elsewhere lines that never run into the next, about every 30 s while a
stage runs and once when it ends; rates that never read 0.0; the stage a bar belongs to."""
from __future__ import annotations

import io
import sys

from competition.progress import StageLine, current_stage, duration_text, progress, rate_text, say_once, stage


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


def test_rates_keep_their_digits_and_turn_into_seconds_per_unit_when_slow():
    # 10 batches in 230 s printed "0.0 batches/s" before
    assert rate_text(10, 230.0, "batches") == "23 s/batch"
    assert rate_text(150, 102.0, "rows") == "1.47 rows/s"
    assert rate_text(150, 230.0, "rows") == "1.53 s/row"
    assert rate_text(12, 1.0, "steps") == "12.0 steps/s" and rate_text(5000, 2.0, "rows") == "2,500 rows/s"
    assert rate_text(1, 600.0, "rows") == "600 s/row" and rate_text(0, 5.0, "rows") == ""
    assert duration_text(42.4) == "42 s" and duration_text(185) == "3 min 05 s" and duration_text(3720) == "1 h 02 min"


def test_off_a_terminal_a_running_stage_says_where_it_is_about_every_interval(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    clock = iter([0.0, 10.0, 31.0, 40.0, 62.0, 62.0])  # start, then one reading per update, then close
    monkeypatch.setattr("competition.progress.time.perf_counter", lambda: next(clock))
    with progress(total=150, desc="generate", unit="rows") as bar:
        bar.update(8)  # 10 s: too soon for a line
        bar.update(8)  # 31 s: 16 rows, 134 left at 1.94 s/row
        bar.set_postfix_str("loss 1.62")
        bar.update(8)  # 40 s: 9 s after the last line
        bar.update(8)  # 62 s
    lines = err.getvalue().splitlines()
    assert lines == ["generate: 16/150 rows, 1.94 s/row, 4 min 20 s left",
                     "generate: 32/150 rows, 1.94 s/row, 3 min 49 s left; loss 1.62",
                     "generate: 32 rows in 1 min 02 s, 1.94 s/row; loss 1.62"]


def test_off_a_terminal_the_last_update_leaves_the_saying_to_the_closing_line(monkeypatch):
    """No "2/2 rows, ..., 0 s left" just before "2 rows in 40.0 s" (run and tune logs had both)."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    clock = iter([0.0, 40.0, 40.0])  # start, the update, close
    monkeypatch.setattr("competition.progress.time.perf_counter", lambda: next(clock))
    with progress(total=2, desc="generate", unit="rows") as bar:
        bar.update(2)
    assert err.getvalue().splitlines() == ["generate: 2 rows in 40.0 s, 20 s/row"]


def test_a_stage_names_the_bars_below_it_and_a_resumed_count_starts_at_initial(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr("competition.progress.LOG_EVERY_S", 0.0)
    with stage("smol fold 0 OOF"):
        assert current_stage() == "smol fold 0 OOF"
        with progress(total=40, desc="training", unit="steps", initial=30) as bar:
            bar.update(5)
    assert current_stage() == ""
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("smol fold 0 OOF training: 35/40 steps, ") and lines[0].endswith(" left")
    assert lines[1].startswith("smol fold 0 OOF training: 35 steps in ")


def test_off_a_terminal_the_libraries_bars_are_silenced(monkeypatch):
    """transformers' "Loading weights", the GGUF conversion's and datasets' map bars wrote carriage
    returns into run logs; on a terminal they stay."""
    import datasets
    import transformers.utils.logging as transformers_logging

    from competition.progress import quiet_library_bars

    try:
        transformers_logging.enable_progress_bar()  # an earlier test's model loading may have turned them off
        datasets.enable_progress_bars()
        monkeypatch.setattr(sys, "stderr", Terminal())
        quiet_library_bars()
        assert transformers_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        quiet_library_bars()
        assert not transformers_logging.is_progress_bar_enabled() and not datasets.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()
        datasets.enable_progress_bars()


def test_say_once_says_each_line_once_per_process(capsys):
    for line in ("a note", "another note", "a note"):
        say_once(line)
    assert capsys.readouterr().err.splitlines() == ["a note", "another note"]
