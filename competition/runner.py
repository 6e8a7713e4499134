"""`competition run`: fit each candidate on k-1 folds, predict the held-out fold (OOF), test and dev.

The runner owns folds, caching, files and progress; a candidate kind only has fit and predict.
A fold is done when its meta.json exists (written last, atomically) and records the same config,
data, folds, test and dev hashes as now: such folds are skipped, stale ones re-run, --force
re-runs all. Once every fold is done the source's test (and dev) output is chosen per row by MBR
over the k fold models' outputs, or comes from a model refit on all rows ([cv] test_strategy).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .config import Config
from .errors import CudaRequired, FoldMismatch, UnknownCandidate
from .predictions import (done_folds, fold_dir, read_meta, run_dir, write_fold, write_source_outputs)
from .provenance import candidate_hash, candidate_seed, candidate_settings, fold_is_current, input_hashes
from .tracking import log_candidate

_VERSIONED = ("competition", "numpy", "pandas", "scikit-learn", "kiwipiepy", "torch", "transformers", "peft", "trl")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def versions() -> dict:
    """Python and package versions, for meta.json."""
    from importlib.metadata import PackageNotFoundError, version

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


def prepare(config: Config, data_dir: str | Path | None = None) -> RunContext:
    """Load the data and the folds, check they match (FoldMismatch) and hash the inputs."""
    from .data import load_from_config
    from .folds import check_folds, labelled_rows

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


def _augmented(context: RunContext, name: str) -> list[pd.DataFrame]:
    """The candidate's augmentation files, read and validated."""
    from .augment import read_augmented

    return [read_augmented(context.config.resolve(path)) for path in context.config.candidate(name).augmentations]


def check_augmentations(context: RunContext, names: Sequence[str]) -> None:
    """Refuse (DataError) augmentation files whose fnames repeat each other's or a labelled, test or
    dev row's, before any fold of any candidate runs: a fold's own check would let some folds train
    before another fold meets the clash (a held-out row's fname is not among that fold's training rows)."""
    from .augment import check_unique_fnames

    reserved = {"the labelled data": context.rows["fname"], "the test data": context.test["fname"]}
    if context.dev is not None:
        reserved["the dev data"] = context.dev["fname"]
    for name in names:
        if context.config.candidate(name).augmentations:
            check_unique_fnames(reserved, _augmented(context, name))


def _training_rows(context: RunContext, name: str, mask: np.ndarray) -> pd.DataFrame:
    """Rows a model of this fold learns from, plus the augmented rows it may see."""
    train = context.rows[mask].reset_index(drop=True)
    if not context.config.candidate(name).augmentations:
        return train
    from .augment import fold_training_rows

    return fold_training_rows(train, _augmented(context, name))


def _make(context: RunContext, name: str, workdir: Path):
    from .candidates import candidate_class

    candidate_config = context.config.candidate(name)
    instance = candidate_class(candidate_config.kind)(name, candidate_config.params, workdir,
                                                       candidate_seed(context.config, name))
    instance.metric = context.config.metric
    texts = [*context.rows["dialogue"], *context.rows["summary"], *context.test["dialogue"]]
    if context.dev is not None:
        texts += [*context.dev["dialogue"], *context.dev["summary"]]
    instance.vocabulary_texts = texts
    return instance


def _predict(instance, rows: pd.DataFrame, what: str) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    summaries = list(instance.predict(rows)) if len(rows) else []
    if len(summaries) != len(rows):
        raise RuntimeError(f"candidate {instance.name!r} returned {len(summaries)} summaries for {len(rows)} {what} rows")
    frame = pd.DataFrame({"fname": rows["fname"].to_numpy(), "summary": ["" if s is None else str(s) for s in summaries]})
    return frame, time.perf_counter() - start


def _fit(context: RunContext, name: str, instance, train: pd.DataFrame, fold: int | None) -> None:
    """instance.fit, after training under `accelerate launch` when the candidate asks for it
    (the fit here then finds the saved training and only loads it; see competition.launch)."""
    from .launch import command_for, launcher_of, run_launcher

    if launcher_of(instance.params) == "accelerate":
        run_launcher(command_for(context.config, name, fold, context.data_dir), cwd=context.config.root)
    instance.fit(train, fold)


def run_fold(context: RunContext, name: str, fold: int, wanted: dict, settings: dict) -> dict:
    """Fit on the other folds, predict the held-out fold, test and dev; write fold_K/ (meta last)."""
    started_at, start = _now(), time.perf_counter()
    held_out = context.fold_of == fold
    train = _training_rows(context, name, ~held_out)
    instance = _make(context, name, fold_dir(context.config, name, fold) / "work")
    fit_start = time.perf_counter()
    _fit(context, name, instance, train, fold)
    timings = {"fit_s": time.perf_counter() - fit_start}
    oof, timings["predict_oof_s"] = _predict(instance, context.rows[held_out], "held-out")
    test, timings["predict_test_s"] = _predict(instance, context.test, "test")
    dev = None
    if context.dev is not None:
        dev, timings["predict_dev_s"] = _predict(instance, context.dev, "dev")
    timings["total_s"] = time.perf_counter() - start
    meta = {**wanted, "name": name, "kind": settings["kind"], "config": settings, "fold": fold,
            "rows": {"train": int(len(train)), "oof": int(held_out.sum()), "test": int(len(context.test)),
                     "dev": None if context.dev is None else int(len(context.dev))},
            "timings": timings, "started_at": started_at, "finished_at": _now(), "versions": versions()}
    write_fold(context.config, name, fold, oof, test, dev, meta)
    return meta


def _choose_outputs(context: RunContext, name: str, scorer) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """MBR over the k fold models' test (and dev) outputs, row by row."""
    from .mbr import mbr_select
    from .predictions import load_fold_dev, load_fold_test

    chosen_counts = {}
    frames = []
    for split, rows, by_fold in (("test", context.test, load_fold_test(context.config, name)),
                                 ("dev", context.dev, load_fold_dev(context.config, name) if context.dev is not None else {})):
        if rows is None:
            frames.append(None)
            continue
        fnames = rows["fname"].tolist()
        outputs = []
        for fold in range(context.k):
            if fold not in by_fold:
                raise FoldMismatch(f"{fold_dir(context.config, name, fold)}/{split}.csv is missing: "
                                   f"re-run with `competition run {name} --folds {fold} --force`")
            series = by_fold[fold].set_index("fname")["summary"]
            if set(series.index) != set(fnames):
                raise FoldMismatch(f"{fold_dir(context.config, name, fold)}/{split}.csv does not cover the {split} rows: "
                                   f"re-run with `competition run {name} --folds {fold} --force`")
            outputs.append(series.loc[fnames].tolist())
        choice = mbr_select(outputs, scorer)
        chosen_counts[split] = np.bincount(choice, minlength=context.k).tolist()
        frames.append(pd.DataFrame({"fname": fnames, "summary": [outputs[c][r] for r, c in enumerate(choice)]}))
    return frames[0], frames[1], {"chosen_per_fold": chosen_counts}


def _refit_outputs(context: RunContext, name: str) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """A model fit on every labelled row (fold None) predicts test and dev."""
    instance = _make(context, name, run_dir(context.config, name) / "refit" / "work")
    start = time.perf_counter()
    _fit(context, name, instance, _training_rows(context, name, np.ones(len(context.rows), dtype=bool)), None)
    timings = {"fit_s": time.perf_counter() - start}
    test, timings["predict_test_s"] = _predict(instance, context.test, "test")
    dev = None
    if context.dev is not None:
        dev, timings["predict_dev_s"] = _predict(instance, context.dev, "dev")
    return test, dev, {"refit_timings": timings}


def _drop_extra_folds(context: RunContext, name: str, echo: Callable[[str], None]) -> None:
    """Remove fold_K/ outputs for K >= k (left by a run with more folds) so no row counts twice."""
    for fold in done_folds(context.config, name):
        if fold >= context.k:
            shutil.rmtree(fold_dir(context.config, name, fold))
            echo(f"{name}: removed fold_{fold}/ (the folds now have k = {context.k})")


def plan_candidate(context: RunContext, name: str, folds: Sequence[int], force: bool,
                   echo: Callable[[str], None]) -> tuple[dict, dict, list[int], list[int]]:
    """(wanted hashes, settings, folds to run, folds skipped because they are current)."""
    config = context.config
    digest, settings = candidate_hash(config, name)
    wanted = {"config_hash": digest, **context.hashes}
    _drop_extra_folds(context, name, echo)
    to_run, skipped = [], []
    for fold in folds:
        meta = read_meta(fold_dir(config, name, fold) / "meta.json")
        if not force and fold_is_current(meta, wanted) and (fold_dir(config, name, fold) / "oof.csv").exists():
            skipped.append(fold)
            continue
        if meta is not None and not force:
            echo(f"{name}: fold {fold} is stale (config, data or folds changed): re-running")
        to_run.append(fold)
    return wanted, settings, to_run, skipped


def finish_candidate(context: RunContext, name: str, wanted: dict, settings: dict, ran: list[int],
                     skipped: list[int], force: bool, echo: Callable[[str], None],
                     failed: dict[int, str] | None = None) -> dict:
    """Report a candidate's folds and choose its test/dev outputs once every fold is done."""
    from .metric import get_scorer

    config = context.config
    digest = wanted["config_hash"]
    current = [fold for fold in range(context.k)
               if fold_is_current(read_meta(fold_dir(config, name, fold) / "meta.json"), wanted)]
    report = {"kind": settings["kind"], "config_hash": digest, "ran": ran, "skipped": skipped,
              "folds_done": len(current), "k": context.k, "complete": len(current) == context.k}
    if failed:
        report["failed"] = {str(fold): error for fold, error in sorted(failed.items())}
    if not report["complete"]:
        missing = [fold for fold in range(context.k) if fold not in current]
        echo(f"{name}: {len(current)}/{context.k} folds done; test output not chosen until fold(s) "
             f"{', '.join(map(str, missing))} run")
        return report

    strategy = config.cv.test_strategy
    fold_finished = [read_meta(fold_dir(config, name, fold) / "meta.json").get("finished_at") for fold in range(context.k)]
    source_inputs = {**wanted, "test_strategy": strategy, "fold_finished_at": fold_finished,
                     "metric": config.metric.scoring()}
    existing = read_meta(run_dir(config, name) / "meta.json") or {}
    if not force and existing.get("inputs") == source_inputs and (run_dir(config, name) / "test.csv").exists():
        report["test_output"] = "unchanged"
        log_candidate(config, name, context.data_dir)  # logged once: a no-op when MLflow has this result
        return report
    start = time.perf_counter()
    if strategy == "refit":
        test, dev, extra = _refit_outputs(context, name)
    else:
        scorer = get_scorer(config.metric.tokenizer, config.metric.convention, config.metric.multi_ref)
        test, dev, extra = _choose_outputs(context, name, scorer)
    meta = {"name": name, "kind": settings["kind"], "config_hash": digest, "config": settings, "inputs": source_inputs,
            **context.hashes, "k": context.k, "test_strategy": strategy, **extra,
            "seconds": time.perf_counter() - start, "finished_at": _now(), "versions": versions()}
    write_source_outputs(config, name, test, dev, meta)
    report["test_output"] = strategy
    log_candidate(config, name, context.data_dir)
    return report


def run_candidate(context: RunContext, name: str, folds: Sequence[int], force: bool, progress: bool,
                  echo: Callable[[str], None]) -> dict:
    """Run one candidate's selected folds here, then choose its test/dev outputs when all folds are done."""
    from .executors import LocalExecutor, jobs_for, run_jobs

    wanted, settings, to_run, skipped = plan_candidate(context, name, folds, force, echo)
    executor = LocalExecutor()
    results = run_jobs(executor, context, jobs_for(context.config, name, to_run, wanted, settings, False),
                       progress=progress, echo=echo)
    return finish_candidate(context, name, wanted, settings, [r.job.fold for r in results if r.error is None],
                            skipped, force, echo)


def _needs_cuda(context: RunContext, name: str) -> bool:
    return _make(context, name, run_dir(context.config, name) / "fold_0" / "work").needs_cuda()


def _needs_cuda_missing(context: RunContext, name: str) -> bool:
    if not _needs_cuda(context, name):
        return False
    import torch

    return not torch.cuda.is_available()


def resolve_names(config: Config, names: Sequence[str] | None) -> list[str]:
    """The candidates to run: the named ones (checked) or every enabled one."""
    if not names:
        enabled = [name for name, candidate in config.candidates.items() if candidate.enabled]
        if not enabled:
            raise UnknownCandidate(f"no enabled candidate in {config.path or 'competition.toml'}: "
                                   f"add one, e.g. [candidates.lead] kind = \"lead\"")
        return enabled
    for name in names:
        if name in config.ensembles:
            raise UnknownCandidate(f"{name!r} is an ensemble, not a candidate: build it with "
                                   f"`competition ensemble {name}`")
        config.candidate(name)
    return list(dict.fromkeys(names))


def run_candidates(config: Config, names: Sequence[str] | None = None, folds: Sequence[int] | None = None,
                   force: bool = False, data_dir: str | Path | None = None, require_all: bool = False,
                   progress: bool = True, echo: Callable[[str], None] = _stderr, executor: str = "local",
                   ray_address: str | None = None) -> dict:
    """Run candidates (default: every enabled one) on the selected folds (default: all).

    Returns {name: {"kind", "config_hash", "ran", "skipped", "folds_done", "k", "complete",
    "test_output", "failed" (ray only: {fold: error})}} or {"skipped": "needs CUDA"} for a
    CUDA-only candidate on a CPU machine (CudaRequired instead with require_all).
    executor "ray" runs every (candidate, fold) as one Ray task (see competition.executors).
    """
    if executor != "local" or ray_address:
        import contextlib

        # Ray's driver prints worker and raylet messages on stdout; keep stdout for results (--json).
        with contextlib.redirect_stdout(sys.stderr):
            return _run_distributed(config, names, folds, force, data_dir, require_all, progress, echo,
                                    executor, ray_address)
    names = resolve_names(config, names)
    context = prepare(config, data_dir)
    selected = _selected_folds(context, folds)
    check_augmentations(context, names)
    echo(f"run: {len(context.rows)} labelled rows in {context.k} folds, {len(context.test)} test rows, "
         + (f"{len(context.dev)} dev rows (hold-out)" if context.dev is not None else "no dev hold-out")
         + f"; test output by {config.cv.test_strategy}")
    echo("config: " + json.dumps({"metric": dataclasses.asdict(config.metric), "cv": dataclasses.asdict(config.cv)},
                                 sort_keys=True))
    results = {}
    for name in names:
        settings = candidate_settings(config, name)
        echo(f"{name}: " + json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str))
        if _needs_cuda_missing(context, name):
            message = f"candidate {name!r} needs CUDA and this machine has none"
            if require_all:
                raise CudaRequired(f"{message}: run it on a GPU machine, or drop --require-all to skip it")
            echo(f"{name}: skipped ({message})")
            results[name] = {"kind": settings["kind"], "skipped": "needs CUDA"}
            continue
        results[name] = run_candidate(context, name, selected, force, progress, echo)
    return results


def _selected_folds(context: RunContext, folds: Sequence[int] | None) -> list[int]:
    selected = list(range(context.k)) if folds is None else sorted(set(int(f) for f in folds))
    bad = [fold for fold in selected if not 0 <= fold < context.k]
    if bad:
        raise FoldMismatch(f"--folds {','.join(map(str, bad))}: the folds are 0..{context.k - 1} "
                           f"({context.config.cv.folds_file})")
    return selected


def _run_distributed(config: Config, names, folds, force, data_dir, require_all, progress, echo,
                     executor_name: str, ray_address: str | None) -> dict:
    """Plan every candidate's pending folds, run them all at once on the executor, then finish each."""
    from .executors import jobs_for, make_executor, run_jobs

    names = resolve_names(config, names)
    executor = make_executor(executor_name, ray_address)
    try:
        context = prepare(config, data_dir)
        selected = _selected_folds(context, folds)
        check_augmentations(context, names)
        echo(f"run: {len(context.rows)} labelled rows in {context.k} folds, {len(context.test)} test rows "
             f"on executor {executor_name}")
        has_gpus = executor.cluster_has_gpus()
        results, plans, jobs = {}, {}, []
        for name in names:
            settings = candidate_settings(config, name)
            echo(f"{name}: " + json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str))
            if not has_gpus and _needs_cuda(context, name):
                message = f"candidate {name!r} needs CUDA and the {executor_name} executor has no GPU"
                if require_all:
                    raise CudaRequired(f"{message}: run it on a GPU cluster, or drop --require-all to skip it")
                echo(f"{name}: skipped ({message})")
                results[name] = {"kind": settings["kind"], "skipped": "needs CUDA"}
                continue
            wanted, settings, to_run, skipped = plan_candidate(context, name, selected, force, echo)
            plans[name] = (wanted, settings, skipped)
            jobs += jobs_for(config, name, to_run, wanted, settings, has_gpus)
        outcomes = run_jobs(executor, context, jobs, progress=progress, echo=echo)
    finally:
        executor.close()
    for name, (wanted, settings, skipped) in plans.items():
        mine = [outcome for outcome in outcomes if outcome.job.name == name]
        ran = sorted(o.job.fold for o in mine if o.error is None)
        failed = {o.job.fold: o.error for o in mine if o.error is not None}
        results[name] = finish_candidate(context, name, wanted, settings, ran, skipped, force, echo, failed)
    return {name: results[name] for name in names if name in results}
