"""Running one fold: the inputs a run works on (RunContext), and fit + predict of one candidate on
one fold, writing fold_K/ (meta.json last).

Both executors (local and Ray) call `run_fold`, so a fold's files are the same wherever it runs;
the runner above plans which folds to run and chooses the test output once they are done. tune
and the launched training processes (train_fold.py) build their candidates here too.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..candidates import candidate_class
from ..candidates.base import FoldInputs
from ..data.augmented import check_unique_fnames, fold_training_rows, read_augmented
from ..data.folds import check_folds, grouping_threshold, labelled_rows
from ..data.loading import load_from_config
from ..data.predictions import fold_dir, write_fold
from ..data.shift import objective_weights
from ..errors import FoldMismatch
from ..models.launch import command_for, launcher_of, run_launcher
from ..models.validation import RowGroups
from ..progress import stage
from ..results.provenance import candidate_seed, input_hashes
from ..workspace.config import Config

_VERSIONED = ("competition", "numpy", "pandas", "scikit-learn", "kiwipiepy", "torch", "transformers", "peft", "trl")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def versions() -> dict:
    """Python and package versions, for meta.json."""

    found = {"python": platform.python_version()}
    for package in _VERSIONED:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


@dataclasses.dataclass
class RunContext:
    """Everything shared by the candidates of one run: rows, folds and their hashes."""

    config: Config
    rows: pd.DataFrame
    fold_of: np.ndarray
    k: int
    test: pd.DataFrame
    dev: pd.DataFrame | None  # None unless dev is a hold-out (not inside the folds)
    hashes: dict
    data_dir: str | None = None  # the --data override, passed on to launched training processes
    refresh: bool = False  # `run --refresh`: candidates re-send what they cached from an endpoint

    @functools.cached_property
    def objective_row_weights(self) -> pd.Series | None:
        """Each labelled row's weight under [cv] objective, by fname (None for "oof"): computed once
        per run, for every fold and stage that chooses by it (lead's N, ensembles, tune)."""
        folds = pd.DataFrame({"fname": self.rows["fname"], "fold": self.fold_of})
        weights = objective_weights(self.config, folds, self.rows, self.dev, self.test, self.rows["fname"])
        return None if weights is None else pd.Series(weights, index=self.rows["fname"].to_numpy())


def prepare(config: Config, data_dir: str | Path | None = None) -> RunContext:
    """Load the data and the folds, check they match (FoldMismatch) and hash the inputs."""

    data = load_from_config(config, data_dir)
    rows = labelled_rows(config, data).reset_index(drop=True)
    folds = check_folds(config, rows)
    fold_of = folds.set_index("fname")["fold"].loc[rows["fname"]].to_numpy()
    k = int(folds["fold"].max()) + 1
    empty = [fold for fold in range(k) if not (fold_of == fold).any()]
    if empty:
        raise FoldMismatch(f"{config.cv.folds_file}: fold(s) {', '.join(map(str, empty))} have no rows: "
                           f"rebuild with `competition folds build --force`")
    dev = data.dev if data.dev is not None and not config.cv.include_dev else None
    hashes = input_hashes(config, rows, data.test, dev)
    return RunContext(config, rows, fold_of, k, data.test, dev, hashes, None if data_dir is None else str(data_dir))


def augmented_rows(context: RunContext, name: str) -> list[pd.DataFrame]:
    """The candidate's augmentation files, read and validated."""

    return [read_augmented(context.config.resolve(path)) for path in context.config.candidate(name).augmentations]


def check_augmentations(context: RunContext, names: Sequence[str]) -> None:
    """Refuse (DataError) augmentation files whose fnames repeat each other's or a labelled, test or
    dev row's, before any fold of any candidate runs: a fold's own check would let some folds train
    before another fold meets the clash (a held-out row's fname is not among that fold's training rows)."""

    reserved = {"the labelled data": context.rows["fname"], "the test data": context.test["fname"]}
    if context.dev is not None:
        reserved["the dev data"] = context.dev["fname"]
    for name in names:
        if context.config.candidate(name).augmentations:
            check_unique_fnames(reserved, augmented_rows(context, name))


def training_rows(context: RunContext, name: str, mask: np.ndarray) -> pd.DataFrame:
    """Rows a model of this fold learns from, plus the augmented rows it may see."""
    train = context.rows[mask].reset_index(drop=True)
    if not context.config.candidate(name).augmentations:
        return train

    return fold_training_rows(train, augmented_rows(context, name))


def build_candidate(config: Config, name: str, workdir: Path, inputs: FoldInputs | None = None):
    """The one way to build a candidate: its kind's class with its params, seed, `workdir` and
    `inputs` (default: the workspace's [metric] only, for a candidate that loads a trained model)."""
    candidate_config = config.candidate(name)
    inputs = FoldInputs(metric=config.metric) if inputs is None else inputs
    return candidate_class(candidate_config.kind)(name, candidate_config.params, workdir, candidate_seed(config, name),
                                                  inputs)


def fold_inputs(context: RunContext, name: str) -> FoldInputs:
    """What this run gives the candidate `name`: [metric], the texts of every split, --refresh, the
    rows a validation split keeps together, and the objective's row weights when its kind uses them."""
    texts = [*context.rows["dialogue"], *context.rows["summary"], *context.test["dialogue"]]
    if context.dev is not None:
        texts += [*context.dev["dialogue"], *context.dev["summary"]]
    uses_objective = candidate_class(context.config.candidate(name).kind).uses_objective
    return FoldInputs(metric=context.config.metric, vocabulary_texts=tuple(texts), refresh=context.refresh,
                      row_groups=row_groups(context, name),
                      row_weights=context.objective_row_weights if uses_objective else None)


def make_candidate(context: RunContext, name: str, workdir: Path):
    """The candidate `name` of this run, built with everything the run gives it (fold_inputs)."""
    return build_candidate(context.config, name, workdir, fold_inputs(context, name))


def row_groups(context: RunContext, name: str):
    """What a validation split inside a fold's training keeps together: the near-duplicate clusters
    the folds were built with ([cv] near_duplicates, checked against folds.json by prepare) and
    each augmented row's source (clusters are computed only if a training validates)."""

    sources = {str(fname): str(source) for frame in augmented_rows(context, name)
               for fname, source in zip(frame["fname"], frame["source_fname"])}
    return RowGroups(context.rows[["fname", "dialogue"]], grouping_threshold(context.config, unbuilt=0.0),
                     context.config.metric.tokenizer, sources)


# The stage each prediction is shown under while it runs ("smol fold 0 OOF generate: 40/150 rows ...").
STAGE_NAMES = {"held-out": "OOF", "test": "test", "dev": "dev"}


def model_label(fold: int | None) -> str:
    """"fold K", or "refit" for the model trained on every labelled row."""
    return "refit" if fold is None else f"fold {fold}"


def predict_rows(instance, rows: pd.DataFrame, what: str, fold: int | None = None) -> tuple[pd.DataFrame, float]:
    """(fname + summary per row, seconds) of `fold`'s model (None: the refit one) on `rows`."""
    start = time.perf_counter()
    with stage(f"{instance.name} {model_label(fold)} {STAGE_NAMES.get(what, what)}"):
        summaries = list(instance.predict(rows)) if len(rows) else []
    if len(summaries) != len(rows):
        raise RuntimeError(f"candidate {instance.name!r} returned {len(summaries)} summaries for {len(rows)} {what} rows")
    frame = pd.DataFrame({"fname": rows["fname"].to_numpy(), "summary": ["" if s is None else str(s) for s in summaries]})
    return frame, time.perf_counter() - start


def fit_candidate(context: RunContext, name: str, instance, train: pd.DataFrame, fold: int | None) -> None:
    """instance.fit, after training under `accelerate launch` when the candidate asks for it
    (the fit here then finds the saved training and only loads it; see competition.models.launch)."""

    with stage(f"{name} {model_label(fold)}"):  # the training's bar reads "NAME fold K training: ..."
        if launcher_of(instance.params) == "accelerate":
            run_launcher(command_for(context.config, name, fold, context.data_dir), cwd=context.config.root)
        instance.fit(train, fold)


def run_fold(context: RunContext, name: str, fold: int, wanted: dict, settings: dict) -> dict:
    """Fit on the other folds, predict the held-out fold, test and dev; write fold_K/ (meta last)."""
    started_at, start = now(), time.perf_counter()
    held_out = context.fold_of == fold
    train = training_rows(context, name, ~held_out)
    instance = make_candidate(context, name, fold_dir(context.config, name, fold) / "work")
    fit_start = time.perf_counter()
    fit_candidate(context, name, instance, train, fold)
    timings = {"fit_s": time.perf_counter() - fit_start}
    reports = {}
    oof, timings["predict_oof_s"] = predict_rows(instance, context.rows[held_out], "held-out", fold)
    reports["oof"] = dict(instance.report)
    test, timings["predict_test_s"] = predict_rows(instance, context.test, "test", fold)
    reports["test"] = dict(instance.report)
    dev = None
    if context.dev is not None:
        dev, timings["predict_dev_s"] = predict_rows(instance, context.dev, "dev", fold)
        reports["dev"] = dict(instance.report)
    timings["total_s"] = time.perf_counter() - start
    meta = {**wanted, "name": name, "kind": settings["kind"], "config": settings, "fold": fold,
            "rows": {"train": int(len(train)), "oof": int(held_out.sum()), "test": int(len(context.test)),
                     "dev": None if context.dev is None else int(len(context.dev))},
            "reports": {split: report for split, report in reports.items() if report},
            "timings": timings, "started_at": started_at, "finished_at": now(), "versions": versions()}
    write_fold(context.config, name, fold, oof, test, dev, meta)
    return meta
