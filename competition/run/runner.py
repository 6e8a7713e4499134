"""`competition run`: fit each candidate on k-1 folds, predict the held-out fold (OOF), test and dev.

The runner owns folds, caching, files and progress; a candidate kind only has fit and predict.
A fold is done when its meta.json exists (written last, atomically) and records the same config,
data, folds, test and dev hashes as now: such folds are skipped, stale ones re-run, --force
re-runs all. Once every fold is done the source's test (and dev) output is chosen per row by MBR
over the k fold models' outputs, or comes from a model refit on all rows ([cv] test_strategy).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..candidates import candidate_class
from ..data.predictions import (done_folds, fold_dir, load_fold_dev, load_fold_test, read_meta, run_dir,
                                write_source_outputs)
from ..errors import CudaRequired, FoldMismatch, UnknownCandidate
from ..results.provenance import candidate_hash, candidate_settings, fold_is_current
from ..results.tracking import log_candidate
from ..text.mbr import mbr_select
from ..text.metric import get_scorer
from ..workspace.config import Config, field_default
from .ensemble import run_ensemble
from .executors import JobResult, jobs_for, make_executor, run_jobs
from .fold_run import (RunContext, build_candidate, check_augmentations, fit_candidate, make_candidate, now,
                       predict_rows, prepare, training_rows, versions)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def choose_outputs(context: RunContext, name: str, scorer) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """MBR over the k fold models' test (and dev) outputs, row by row."""

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
    instance = make_candidate(context, name, run_dir(context.config, name) / "refit" / "work")
    start = time.perf_counter()
    fit_candidate(context, name, instance, training_rows(context, name, np.ones(len(context.rows), dtype=bool)), None)
    timings = {"fit_s": time.perf_counter() - start}
    test, timings["predict_test_s"] = predict_rows(instance, context.test, "test")
    dev = None
    if context.dev is not None:
        dev, timings["predict_dev_s"] = predict_rows(instance, context.dev, "dev")
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
    kind = candidate_class(config.candidate(name).kind)
    for fold in folds:
        meta = read_meta(fold_dir(config, name, fold) / "meta.json")
        retry = kind.retry_reason((meta or {}).get("reports") or {})
        if not force and not retry and fold_is_current(meta, wanted) and (fold_dir(config, name, fold) / "oof.csv").exists():
            skipped.append(fold)
            continue
        if meta is not None and not force:
            echo(f"{name}: fold {fold}: {retry}" if retry and fold_is_current(meta, wanted) else
                 f"{name}: fold {fold} is stale (config, data or folds changed): re-running")
        to_run.append(fold)
    return wanted, settings, to_run, skipped


def finish_candidate(context: RunContext, name: str, wanted: dict, settings: dict, ran: list[int],
                     skipped: list[int], force: bool, echo: Callable[[str], None],
                     failed: dict[int, str] | None = None) -> dict:
    """Report a candidate's folds and choose its test/dev outputs once every fold is done."""

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
        test, dev, extra = choose_outputs(context, name, scorer)
    meta = {"name": name, "kind": settings["kind"], "config_hash": digest, "config": settings, "inputs": source_inputs,
            **context.hashes, "k": context.k, "test_strategy": strategy, **extra,
            "seconds": time.perf_counter() - start, "finished_at": now(), "versions": versions()}
    write_source_outputs(config, name, test, dev, meta)
    report["test_output"] = strategy
    log_candidate(config, name, context.data_dir)
    return report


def _needs_cuda(context: RunContext, name: str) -> bool:
    return build_candidate(context.config, name, run_dir(context.config, name) / "fold_0" / "work").needs_cuda()


def resolve_names(config: Config, names: Sequence[str] | None) -> list[str]:
    """The candidates to run: the named ones (checked; a candidate with seeds = [...] names its
    NAME#sSEED sources) or every enabled one."""
    if not names:
        enabled = [name for name, candidate in config.candidates.items() if candidate.enabled]
        if not enabled:
            raise UnknownCandidate(f"no enabled candidate in {config.path or 'competition.toml'}: "
                                   f"add one, e.g. [candidates.lead] kind = \"lead\"")
        return enabled
    expanded = []
    for name in names:
        if name in config.seed_groups:
            expanded += config.seed_groups[name]
            continue
        if name in config.ensembles:
            raise UnknownCandidate(f"{name!r} is an ensemble, not a candidate: build it with "
                                   f"`competition ensemble {name}`")
        config.candidate(name)
        expanded.append(name)
    return list(dict.fromkeys(expanded))


def build_seed_groups(config: Config, results: dict, echo: Callable[[str], None]) -> dict:
    """After a run: NAME of each candidate with seeds = [...] whose seed sources all ran and are
    complete, written as their per-row MBR (an ensemble source); a report per NAME built."""

    built = {}
    for name, members in config.seed_groups.items():
        reports = [results.get(member) for member in members]
        if any(report is None for report in reports):
            continue
        if not all(report.get("complete") for report in reports):
            echo(f"{name}: not built yet: its seeds {', '.join(members)} are not all complete")
            continue
        if run_ensemble(config, name)["warnings"]:  # ensemble.member_warnings: two seeds, said in a seed group's terms
            echo(f"{name}: the MBR of two seeds cannot choose by agreement (each output agrees with the other "
                 f"equally), so {name}'s outputs are {members[0]}'s: use three or more seeds, or compare the two "
                 "seeds in `competition cv`")
        built[name] = {"kind": "seeds (mbr)", "members": members, "ran": [], "skipped": [],
                       "folds_done": reports[0]["folds_done"], "k": reports[0]["k"], "complete": True,
                       "test_output": f"mbr over {len(members)} seeds"}
    return built


def _changed_fields(params) -> list[str]:
    """"key value" for each field of a params dataclass that differs from its default."""
    changed = []
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if value != field_default(field):
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            changed.append(f"{field.name} {text[:37] + '...' if len(text) > 40 else text}")
    return changed


def settings_line(config: Config, name: str, most: int = 6) -> str:
    """A candidate's settings in one short line: its kind and the params set away from their
    defaults (the first `most`; all of them are in runs/NAME/meta.json, "config")."""
    candidate = config.candidate(name)
    changed = sorted(_changed_fields(candidate.params), key=lambda text: not text.startswith("model "))  # model first
    extra = [f"{len(candidate.augmentations)} augmentation(s)"] if candidate.augmentations else []
    shown = changed[:most] + ([f"+{len(changed) - most} more"] if len(changed) > most else [])
    return f"{candidate.kind}, " + (", ".join(shown + extra) if shown or extra else "default settings")


def run_candidates(config: Config, names: Sequence[str] | None = None, folds: Sequence[int] | None = None,
                   force: bool = False, data_dir: str | Path | None = None, require_all: bool = False,
                   progress: bool = True, echo: Callable[[str], None] = _stderr, executor: str = "local",
                   ray_address: str | None = None, refresh: bool = False) -> dict:
    """Run candidates (default: every enabled one) on the selected folds (default: all).

    Returns {name: {"kind", "config_hash", "ran", "skipped", "folds_done", "k", "complete",
    "test_output", "failed" (ray only: {fold: error})}}; "ran" and "skipped" (folds already done) are
    lists of folds. A CUDA-only candidate where the executor has no GPU runs nothing: {"kind", "ran": [],
    "skipped": [], "complete": False, "not_run": "needs CUDA"} (CudaRequired instead with require_all).
    Every candidate is planned first, then all pending folds go to the executor (see
    competition.run.executors) and each candidate is finished as soon as its folds have reported: the
    local executor runs them one after another (candidate by candidate, the first error stops the
    run), "ray" runs every (candidate, fold) at once as a Ray task and reports failed ones.
    `refresh` re-runs the folds (as force) with endpoint answers asked again, not read from cache.
    """
    force = force or refresh
    names = resolve_names(config, names)
    results, plans, jobs = {}, {}, []
    with contextlib.ExitStack() as stack:
        if executor != "local":
            # Ray's driver prints worker and raylet messages on stdout; keep stdout for results (--json).
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        jobs_executor = make_executor(executor, ray_address)
        stack.callback(jobs_executor.close)
        context = dataclasses.replace(prepare(config, data_dir), refresh=refresh)
        selected = _selected_folds(context, folds)
        check_augmentations(context, names)
        echo(f"run: {len(context.rows)} labelled rows in {context.k} folds, {len(context.test)} test rows, "
             + (f"{len(context.dev)} dev rows (hold-out)" if context.dev is not None else "no dev hold-out")
             + f"; test output by {config.cv.test_strategy}; executor {jobs_executor.name}")
        echo(f"config: metric {config.metric.tokenizer} tokens, {config.metric.convention} convention, "
             f"{config.metric.multi_ref} over references; cv k={config.cv.k} ({config.cv.strategy}), near_duplicates "
             f"{config.cv.near_duplicates}, ranked by {config.cv.pick_by}, objective {config.cv.objective} (each "
             f"candidate's full settings: runs/NAME/meta.json)")
        # Asked at most once, and only when a candidate needs the answer: locally it imports torch.
        has_gpus = functools.cache(jobs_executor.cluster_has_gpus)
        for name in names:
            settings = candidate_settings(config, name)
            echo(f"{name}: {settings_line(config, name)}")
            if _needs_cuda(context, name) and not has_gpus():
                message = f"candidate {name!r} needs CUDA and {jobs_executor.where} has no GPU"
                if require_all:
                    raise CudaRequired(f"{message}: run it where there is one, or drop --require-all to skip it")
                echo(f"{name}: skipped ({message})")
                results[name] = {"kind": settings["kind"], "ran": [], "skipped": [], "complete": False,
                                 "not_run": "needs CUDA"}
                continue
            wanted, settings, to_run, skipped = plan_candidate(context, name, selected, force, echo)
            plans[name] = (wanted, settings, to_run, skipped)
            jobs += jobs_for(config, name, to_run, wanted, settings, has_gpus)

        reported: dict[str, list[JobResult]] = {name: [] for name in plans}

        def finish(name: str) -> None:
            wanted, settings, _, skipped = plans[name]
            ran = sorted(result.job.fold for result in reported[name] if result.error is None)
            failed = {result.job.fold: result.error for result in reported[name] if result.error is not None}
            results[name] = finish_candidate(context, name, wanted, settings, ran, skipped, force, echo, failed)

        # Ray submits every job here; the local executor runs each one as the loop below asks for it.
        outcomes = stack.enter_context(contextlib.closing(run_jobs(jobs_executor, context, jobs, progress, echo)))
        for name, (_, _, to_run, _) in plans.items():
            if not to_run:
                finish(name)
        for outcome in outcomes:
            name = outcome.job.name
            reported[name].append(outcome)
            if len(reported[name]) == len(plans[name][2]):
                finish(name)
    results = {name: results[name] for name in names}
    return {**results, **build_seed_groups(config, results, echo)}


def _selected_folds(context: RunContext, folds: Sequence[int] | None) -> list[int]:
    selected = list(range(context.k)) if folds is None else sorted(set(int(f) for f in folds))
    bad = [fold for fold in selected if not 0 <= fold < context.k]
    if bad:
        raise FoldMismatch(f"--folds {','.join(map(str, bad))}: the folds are 0..{context.k - 1} "
                           f"({context.config.cv.folds_file})")
    return selected
