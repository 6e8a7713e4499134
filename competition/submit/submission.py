"""Leaderboard CSVs and the tracked submission log (`submissions/log.csv`).

Every submission is a file `submissions/NNNN-SOURCE.csv` in exactly the leaderboard format and one
row in `log.csv` with what produced it (source, config hash, git commit) and its local scores (OOF,
dev). Leaderboard scores come later, typed in with `record_scores` or fetched by `leaderboard.sync`
(with the platform's reference and upload time): `log.csv` keeps the current values and
`lb_history.csv` every recording and who made it, so a corrected typo stays visible and a score
typed by hand is never silently replaced. Writers take an exclusive lock on `submissions/.log.lock`
(`edit_log`) and replace files atomically, so parallel `submit`s and syncs never lose or corrupt a row.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import math
import os
import re
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from ..data.loading import data_folder, read_split
from ..data.predictions import RUNS_DIR, list_sources, load_test
from ..errors import SubmissionError
from ..files import atomic_write_text, csv_text, remove_stale_temps, write_temp
from ..results.cv import leaderboard
from ..results.provenance import missing_source, require_current, workspace_inputs
from ..results.tracking import log_submission, record_leaderboard
from ..text.metric import get_scorer
from ..workspace.config import Config

LOG_FILE = "log.csv"
LB_HISTORY_FILE = "lb_history.csv"
LOCK_FILE = ".log.lock"
# A submission CSV waits under this suffix until its log row is written, then takes its name.
PENDING_SUFFIX = ".pending"
LOG_COLUMNS = [
    "id", "created_at", "file", "sha256", "source", "config_hash", "git_commit", "git_dirty",
    "oof_rouge1", "oof_rouge2", "oof_rougeL", "oof_final", "oof_ci95_low", "oof_ci95_high",
    "matched_final", "matched_ci95_low", "matched_ci95_high", "dev_final", "dev_novel_final",
    "public", "private", "lb_ref", "uploaded_at", "note",
]
# Columns added after the first logs were written: an older log reads them as "" (unknown).
# lb_ref: the platform's reference of the uploaded submission; uploaded_at: when it was uploaded (UTC).
LATER_LOG_COLUMNS = ("matched_final", "matched_ci95_low", "matched_ci95_high", "dev_novel_final", "lb_ref",
                     "uploaded_at")
# by: who recorded it, "hand" (`lb record`) or "sync" (fetched from the platform); "" in older files = hand.
LB_HISTORY_COLUMNS = ["recorded_at", "id", "public", "private", "previous_public", "previous_private", "by"]
LATER_LB_HISTORY_COLUMNS = ("by",)
LB_RANGE = (0.0, 100.0)
# A leaderboard score further than this from its submission's CV (points on 0-100) is refused without
# --force: real CV-leaderboard gaps are a few points; 25 is a wrong id, a wrong column or a wrong scale.
PLAUSIBLE_GAP = 25.0
SCORE_RULE = (f"a score below 1 while CVs are 1 or more (the 0-1 scale), or one more than {PLAUSIBLE_GAP:g} points "
              f"from the submission's CV, is refused unless --force")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class DuplicateSubmission(SubmissionError):
    """The exact same file (same sha256) is already in the log."""

    def __init__(self, message: str, existing: dict):
        super().__init__(message)
        self.existing = existing


def now_utc() -> str:
    """UTC ISO 8601 to the second, e.g. 2026-11-24T03:54:05+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def submissions_dir(config: Config) -> Path:
    return config.resolve(config.submit.dir)


# --- the leaderboard file -------------------------------------------------------------------------

def _label(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def leaderboard_csv(sample_ids: Sequence[str], predictions: pd.DataFrame, source: str = "predictions") -> bytes:
    """The leaderboard file: header fname,summary, one row per sample id in its order, UTF-8.

    Raises SubmissionError naming the rows when an id is missing, extra or duplicated, or a summary
    is empty.
    """
    fnames = predictions["fname"].astype(str).tolist()
    summaries = ["" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
                 for value in predictions["summary"].tolist()]
    problems = []
    counts = Counter(fnames)
    seen = set(counts)
    duplicated = sorted(f for f, count in counts.items() if count > 1)
    if duplicated:
        problems.append(f"{len(duplicated)} duplicated id(s): {_label(duplicated)}")
    wanted = set(sample_ids)
    missing = [f for f in sample_ids if f not in seen]
    if missing:
        problems.append(f"{len(missing)} missing id(s): {_label(missing)}")
    extra = [f for f in dict.fromkeys(fnames) if f not in wanted]
    if extra:
        problems.append(f"{len(extra)} id(s) not in sample_submission: {_label(extra)}")
    empty = [f for f, text in zip(fnames, summaries) if not text.strip() and f in wanted]
    if empty:
        problems.append(f"{len(empty)} empty summar(ies): {_label(empty)}")
    if problems:
        raise SubmissionError(f"{source}: test predictions do not match sample_submission: "
                              + "; ".join(problems) + "; re-run the source or fix its test.csv")
    summary_of = dict(zip(fnames, summaries))
    return csv_text([[fname, summary_of[fname]] for fname in sample_ids], ["fname", "summary"]).encode("utf-8")


# --- the log --------------------------------------------------------------------------------------

@contextlib.contextmanager
def log_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on the submissions folder's lock file (held until the block ends)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _read_table(path: Path, columns: list[str], later: tuple[str, ...] = ()) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame({column: pd.Series(dtype=str) for column in columns})
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in later:
        if column not in frame.columns:
            frame[column] = ""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise SubmissionError(f"{path}: missing column(s) {', '.join(missing)}; restore it from git "
                              f"(`git checkout {path.name}`)")
    return frame[columns]


def read_log(config: Config) -> pd.DataFrame:
    """The submission log, every value a string ("" where not known)."""
    return _read_table(submissions_dir(config) / LOG_FILE, LOG_COLUMNS, LATER_LOG_COLUMNS)


def read_lb_history(config: Config) -> pd.DataFrame:
    """Every leaderboard recording, oldest first (corrections included)."""
    return _read_table(submissions_dir(config) / LB_HISTORY_FILE, LB_HISTORY_COLUMNS, LATER_LB_HISTORY_COLUMNS)


def _write_table(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
    atomic_write_text(path, csv_text(frame[columns].values.tolist(), columns))


def git_state(folder: Path, exclude: Sequence[str] = ()) -> tuple[str, str]:
    """(commit, dirty) of the git checkout holding `folder`; ("", "") outside git. Changes to
    tracked files under `exclude` (the submissions folder, rewritten by every submit) don't count."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return "", ""
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                 *(f":(exclude){path}" for path in exclude))
    return commit.strip(), ("" if status is None else str(bool(status.strip())).lower())


def _number(value) -> str:
    return "" if value is None else f"{float(value):.4f}"


def local_scores(config: Config, source: str) -> dict:
    """The source's OOF ROUGE, 95% interval, test-matched final and interval, dev finals (all rows,
    novel rows) and config hash from cv.leaderboard."""

    entries = leaderboard(config, [source])
    if not entries:
        return {}
    entry = entries[0]
    oof = entry.get("oof") or {}
    complete = entry.get("complete", False)
    ci = entry.get("ci95") or [None, None]
    matched = (entry.get("test_matched") or {}) if complete else {}
    matched_ci = matched.get("ci95") or [None, None]
    return {
        "config_hash": entry.get("config_hash") or "",
        "oof_rouge1": _number(oof.get("rouge1")) if complete else "",
        "oof_rouge2": _number(oof.get("rouge2")) if complete else "",
        "oof_rougeL": _number(oof.get("rougeL")) if complete else "",
        "oof_final": _number(oof.get("final")) if complete else "",
        "oof_ci95_low": _number(ci[0]) if complete else "",
        "oof_ci95_high": _number(ci[1]) if complete else "",
        "matched_final": _number(matched.get("final")),
        "matched_ci95_low": _number(matched_ci[0]),
        "matched_ci95_high": _number(matched_ci[1]),
        "dev_final": _number(entry.get("dev_final")),
        "dev_novel_final": _number(entry.get("dev_novel_final")),
    }


def _source_predictions(config: Config, source: str) -> pd.DataFrame:
    if source not in list_sources(config):
        raise missing_source(config, source)
    return load_test(config, source)


def _refuse_duplicate(log: pd.DataFrame, digest: str, source: str) -> None:
    same = log[log["sha256"] == digest]
    if len(same):
        existing = same.iloc[0].to_dict()
        raise DuplicateSubmission(f"{source}: identical to submission {existing['id']} ({existing['file']}, "
                                  f"sha256 {digest[:12]}); pass --allow-duplicate to log it again", existing)


def submit(config: Config, source: str, note: str = "", allow_duplicate: bool = False) -> dict:
    """Write `submissions/NNNN-SOURCE.csv` from SOURCE's test predictions and log it; returns the
    new log row. Refuses a malformed file, and a file already logged unless `allow_duplicate`."""

    sample_path = data_folder(config) / config.data.sample_submission
    sample_ids = read_split(sample_path, "sample_submission")["fname"].tolist()
    content = leaderboard_csv(sample_ids, _source_predictions(config, source), source)
    hashes, k = workspace_inputs(config)
    require_current(config, source, hashes, k)  # never a test output of older files or another config
    digest = hashlib.sha256(content).hexdigest()
    if not allow_duplicate:
        _refuse_duplicate(read_log(config), digest, source)  # early, before scoring; again under the lock
    commit, dirty = git_state(config.root, [config.submit.dir])
    row = {"source": source, "sha256": digest, "git_commit": commit, "git_dirty": dirty,
           "note": " ".join(note.split()), "public": "", "private": "", "lb_ref": "", "uploaded_at": "",
           **{column: "" for column in LOG_COLUMNS if column.startswith(("oof_", "matched_", "dev_"))}, "config_hash": ""}
    row.update(local_scores(config, source))
    folder = submissions_dir(config)
    with log_lock(folder):
        log = read_log(config)
        _finish_pending(folder, log)
        if not allow_duplicate:
            _refuse_duplicate(log, digest, source)
        number = max((int(value) for value in log["id"] if value.isdigit()), default=0) + 1
        name = f"{number:04d}-{_SAFE_NAME.sub('_', source)}.csv"
        # The file takes its name only once its log row is written: a kill in between never leaves
        # a submission that the log does not know (the next start finishes or drops it).
        pending = _pending_path(folder, name)
        os.replace(write_temp(folder / name, content.decode("utf-8")), pending)  # the exact bytes hashed above
        row.update({"id": f"{number:04d}", "created_at": now_utc(), "file": name})
        log = pd.concat([log, pd.DataFrame([row])[LOG_COLUMNS]], ignore_index=True)
        _write_table(folder / LOG_FILE, log, LOG_COLUMNS)
        os.replace(pending, folder / name)
    log_submission(config, row, folder / name)  # after the lock: MLflow is a view, never in the log's way
    return {column: row[column] for column in LOG_COLUMNS}


def _pending_path(folder: Path, name: str) -> Path:
    return folder / f".{name}{PENDING_SUFFIX}"


def _finish_pending(folder: Path, log: pd.DataFrame) -> None:
    """Under the log lock: a pending submission whose row reached the log takes its name; one
    whose row never did (killed before) is removed."""
    logged = set(log["file"])
    for pending in folder.glob(f".*{PENDING_SUFFIX}"):
        name = pending.name[1:-len(PENDING_SUFFIX)]
        if name in logged:
            os.replace(pending, folder / name)
        else:
            pending.unlink(missing_ok=True)


def tidy_submissions(config: Config) -> None:
    """What a killed submit left behind: finish or drop pending submissions (takes the lock)."""
    folder = submissions_dir(config)
    if folder.is_dir() and any(folder.glob(f".*{PENDING_SUFFIX}")):
        with log_lock(folder):
            _finish_pending(folder, read_log(config))


def tidy_workspace(config: Config) -> None:
    """What a killed command left: temp files of interrupted writes (old enough that no writer is
    still at work) under runs/, submissions/ and the folds' folder, and pending submissions."""
    for folder in (config.resolve(RUNS_DIR), submissions_dir(config), config.resolve(config.cv.folds_file).parent):
        remove_stale_temps(folder)
    tidy_submissions(config)


# --- leaderboard scores ---------------------------------------------------------------------------

def find_row(log: pd.DataFrame, key: str, where: str = LOG_FILE) -> int:
    """The log position of a submission given as its id ("3" or "0003") or file name."""
    key = str(key).strip()
    if key.isdigit():
        matches = [i for i, value in enumerate(log["id"]) if value.isdigit() and int(value) == int(key)]
    else:
        matches = [i for i, value in enumerate(log["file"]) if value == Path(key).name]
    if not matches:
        known = _label(log["id"].tolist()[-5:]) or "none yet"
        raise SubmissionError(f"no submission {key!r} in {where} (latest ids: {known}); "
                              f"see `competition history`")
    return matches[0]


def _score(value: float | None, which: str) -> str:
    if value is None:
        return ""
    low, high = LB_RANGE
    if not (low <= value <= high) or math.isnan(value):
        raise SubmissionError(f"--{which} {value} is outside {low:g}-{high:g}: type the leaderboard's final "
                              f"score as shown (e.g. 42.8153)")
    return f"{value:.4f}"


def _float(text: str) -> float | None:
    text = str(text).strip()
    return float(text) if text else None


def score_problem(log: pd.DataFrame, position: int, which: str, value: float) -> str | None:
    """Why a leaderboard score is implausible for the submission at `position` (None when it is not):
    below 1 while CVs are on 0-100, or further than PLAUSIBLE_GAP from the submission's CV."""
    row = log.iloc[position]
    cv = _float(row["oof_final"])
    cvs = [number for number in map(_float, log["oof_final"]) if number is not None]
    scale_cv = cv if cv is not None else (max(cvs) if cvs else None)
    if scale_cv is not None and scale_cv >= 1 and value < 1:
        return (f"{which} {value:g} for submission {row['id']} looks like the 0-1 scale while CVs are on 0-100 "
                f"(CV {scale_cv:.4f}): give it x100 ({value * 100:.4f})")
    if cv is not None and abs(value - cv) > PLAUSIBLE_GAP:
        return (f"{which} {value:.4f} is {abs(value - cv):.2f} points from submission {row['id']}'s CV {cv:.4f}, "
                f"more than the {PLAUSIBLE_GAP:g} a real gap reaches: check the id and the score")
    return None


class LogEdit:
    """The log and its leaderboard history, held under the lock by `edit_log`: rows change through
    `set` and `record`, and both files are written when the block ends without an error."""

    def __init__(self, log: pd.DataFrame, history: pd.DataFrame, where: str):
        self.log, self.history, self.where = log, history, where
        self.log_changed = self.history_changed = False

    def find(self, key: str) -> int:
        return find_row(self.log, key, self.where)

    def set(self, position: int, column: str, value: str) -> None:
        if self.log.iloc[position][column] != value:
            self.log.iloc[position, LOG_COLUMNS.index(column)] = value
            self.log_changed = True

    def record(self, position: int, public: str = "", private: str = "", by: str = "hand") -> None:
        """Set public and/or private (texts; "" = leave as is) and add the recording to the history."""
        previous = self.log.iloc[position][["public", "private"]].to_dict()
        for column, text in (("public", public), ("private", private)):
            if text:
                self.set(position, column, text)
        entry = {"recorded_at": now_utc(), "id": self.log.iloc[position]["id"], "public": public, "private": private,
                 "previous_public": previous["public"] if public else "",
                 "previous_private": previous["private"] if private else "", "by": by}
        self.history = pd.concat([self.history, pd.DataFrame([entry])[LB_HISTORY_COLUMNS]], ignore_index=True)
        self.history_changed = True

    def origin(self, position: int, column: str) -> str:
        """Who recorded the current public or private score: "hand", "sync", or "" when there is none.
        A value with no recording (typed into log.csv, or an older history) counts as by hand."""
        if not self.log.iloc[position][column]:
            return ""
        submission_id = self.log.iloc[position]["id"]
        for entry in reversed(self.history.to_dict("records")):
            if entry["id"] == submission_id and entry[column]:
                return entry["by"] or "hand"
        return "hand"


@contextlib.contextmanager
def edit_log(config: Config) -> Iterator[LogEdit]:
    """Change the log under its lock; the history, then the log, are replaced atomically at the end."""
    folder = submissions_dir(config)
    with log_lock(folder):
        edit = LogEdit(read_log(config), read_lb_history(config), str(folder / LOG_FILE))
        yield edit
        if edit.history_changed:
            _write_table(folder / LB_HISTORY_FILE, edit.history, LB_HISTORY_COLUMNS)
        if edit.log_changed:
            _write_table(folder / LOG_FILE, edit.log, LOG_COLUMNS)


def record_scores(config: Config, key: str, public: float | None = None, private: float | None = None,
                  force: bool = False) -> dict:
    """Record leaderboard scores for a logged submission; returns the updated log row. A new value
    replaces the old one in log.csv and both are kept in lb_history.csv. An implausible score
    (`score_problem`) is refused unless `force`."""
    if public is None and private is None:
        raise SubmissionError("nothing to record: pass --public X and/or --private Y")
    public_text, private_text = _score(public, "public"), _score(private, "private")
    with edit_log(config) as edit:
        position = edit.find(key)
        for which, value in (("public", public), ("private", private)):
            problem = None if value is None or force else score_problem(edit.log, position, which, value)
            if problem:
                raise SubmissionError(f"--{problem}; pass --force if the score is right ({SCORE_RULE})")
        edit.record(position, public_text, private_text, by="hand")
        row = edit.log.iloc[position].to_dict()
    record_leaderboard(config, row, submissions_dir(config))
    return row


# --- comparing two submissions --------------------------------------------------------------------

def submission_file(config: Config, key: str) -> Path:
    """A submission given as a log id, a file name in the submissions folder, or a path."""
    path = Path(key)
    if path.suffix == ".csv" and path.exists():
        return path
    log = read_log(config)
    row = log.iloc[find_row(log, key, str(submissions_dir(config) / LOG_FILE))]
    return submissions_dir(config) / row["file"]


def read_submission(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise SubmissionError(f"{path} not found: it is in the log but not on disk; restore it from git")
    return pd.read_csv(io.BytesIO(path.read_bytes()), dtype=str, keep_default_na=False)


def diff_submissions(config: Config, first: str, second: str, examples: int = 3) -> dict:
    """Rows whose summaries differ, the mean ROUGE of A against B over all rows, and the most
    different rows side by side."""

    path_a, path_b = submission_file(config, first), submission_file(config, second)
    frame_a, frame_b = read_submission(path_a), read_submission(path_b)
    joined = frame_a.merge(frame_b, on="fname", how="outer", suffixes=("_a", "_b"), indicator=True)
    unmatched = joined[joined["_merge"] != "both"]["fname"].tolist()
    if unmatched:
        raise SubmissionError(f"{path_a.name} and {path_b.name} hold different ids (e.g. {_label(unmatched, 3)}): "
                              f"they are not for the same test set")
    joined = joined.set_index("fname").loc[frame_a["fname"]].reset_index()
    metric = config.metric
    pairs = get_scorer(metric.tokenizer, metric.convention, metric.multi_ref).score_pairs(
        joined["summary_a"].tolist(), joined["summary_b"].tolist())
    f1 = pairs[:, :, 2] if len(joined) else pairs.reshape(0, 3)
    row_final = f1.mean(axis=1) * 100
    differ = (joined["summary_a"] != joined["summary_b"]).to_numpy()
    order = sorted(range(len(joined)), key=lambda i: row_final[i])
    shown = [{"fname": joined["fname"][i], "final": round(float(row_final[i]), 2),
              "a": joined["summary_a"][i], "b": joined["summary_b"][i]} for i in order if differ[i]][:examples]
    means = f1.mean(axis=0) if len(joined) else [0.0, 0.0, 0.0]
    return {"a": str(path_a), "b": str(path_b), "rows": int(len(joined)), "differing": int(differ.sum()),
            "rouge1": float(means[0] * 100), "rouge2": float(means[1] * 100), "rougeL": float(means[2] * 100),
            "final": float(sum(means) / 3 * 100), "examples": shown}
