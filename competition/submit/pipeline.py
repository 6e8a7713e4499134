"""`make submit`: data check -> folds (when absent) -> run candidates -> ensembles -> cv -> submit.

Each stage is the library function its own command calls, so a pipeline run leaves exactly the
files the step-by-step commands would: folds/, runs/NAME/, submissions/NNNN-SOURCE.csv + log row.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from ..data import folds
from ..data.loading import SAMPLE_DIR, data_folder, describe, load_from_config
from ..errors import CompetitionError, UnknownCandidate
from ..results import cv
from ..results.cv import pick_score
from ..run import ensemble, runner
from ..workspace.config import Config
from .submission import DuplicateSubmission, submit


def with_data_dir(config: Config, data_dir: str | Path | None) -> Config:
    """A copy of the config whose [data] dir is `data_dir` (absolute), so every stage reads it."""
    if not data_dir:
        return config
    changed = copy.deepcopy(config)
    changed.data.dir = str(Path(data_dir).resolve())
    return changed


def choose_source(config: Config, board: list[dict]) -> str:
    """[submit] source when set, else the complete source with the best CV by [cv] pick_by."""

    if config.submit.source:
        return config.submit.source
    complete = [entry for entry in board if entry.get("complete")]
    if not complete:
        raise UnknownCandidate("no source has complete out-of-fold predictions to submit: enable a candidate "
                               "in competition.toml (e.g. kind = \"lead\") and re-run")
    return max(complete, key=lambda entry: pick_score(entry, config.cv.pick_by))["name"]


def run_pipeline(config: Config, data_dir: str | Path | None = None, require_all: bool = False,
                 note: str = "make submit", echo: Callable[[str], None] = print) -> dict:
    """Run every stage and submit; returns {"data", "folds", "runs", "ensembles", "leaderboard",
    "source", "submission", "new"} where new is False when the same file was already logged."""

    config = with_data_dir(config, data_dir)
    data = load_from_config(config)
    summary = describe(data)
    sample = " (the bundled sample: put the real files in data/)" if data_folder(config) == SAMPLE_DIR else ""
    echo("[1/6] data check: " + ", ".join(f"{split} {rows} rows" for split, rows in summary["rows"].items())
         + sample)

    folds_path = config.resolve(config.cv.folds_file)
    if folds_path.exists():
        folds.check_folds(config, folds.labelled_rows(config, data))
        echo(f"[2/6] folds: {folds_path} matches the data")
        built = False
    else:
        folds.build_folds(config, folds.labelled_rows(config, data), test=data.test)
        echo(f"[2/6] folds: built {folds_path} (k={config.cv.k}, strategy {config.cv.strategy})")
        built = True

    enabled = runner.resolve_names(config, None)
    echo(f"[3/6] run: {', '.join(enabled)}")
    runs = runner.run_candidates(config, enabled, require_all=require_all, echo=echo)

    ensembles = [name for name, settings in config.ensembles.items() if settings.enabled]
    built_ensembles = {}
    if ensembles:
        echo(f"[4/6] ensembles: {', '.join(ensembles)}")
        for name in ensembles:
            try:
                built_ensembles[name] = ensemble.run_ensemble(config, name)
                for warning in built_ensembles[name]["warnings"]:
                    echo(f"      warning: {warning}")
            except CompetitionError as error:
                # One unbuildable ensemble (e.g. its members were skipped for lack of CUDA) must not
                # stop the submission of the sources that did run.
                echo(f"      skipped ensemble {name}: {error}")
    else:
        echo("[4/6] ensembles: none enabled")

    board = cv.leaderboard(config)
    source = choose_source(config, board)
    echo(f"[5/6] cv: {len(board)} source(s); submitting {source}"
         + (" ([submit] source)" if config.submit.source
               else " (best test-matched final)" if config.cv.pick_by == "test_matched" else " (best OOF final)"))
    try:
        row, new = submit(config, source, note=note), True
    except DuplicateSubmission as duplicate:
        row, new = duplicate.existing, False
        echo(f"[6/6] submit: unchanged, identical to submission {row['id']} ({row['file']}); nothing new logged")
    else:
        echo(f"[6/6] submit: wrote {config.submit.dir}/{row['file']}")
    return {"data": summary["rows"], "folds": {"path": str(folds_path), "built": built}, "runs": runs,
            "ensembles": list(built_ensembles), "leaderboard": board, "source": source,
            "submission": row, "new": new}
