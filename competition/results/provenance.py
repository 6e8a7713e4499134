"""What makes a result current: the one answer `run`, `cv`, `ensemble`, `tune`, `submit` and
`pipeline` all ask for.

Every fold (runs/NAME/fold_K/meta.json) and every source's chosen outputs (runs/NAME/meta.json)
record what they were made from: the source's config hash (a candidate's settings, seed,
augmentation files and local model folders' fingerprints; an ensemble's settings; a tuned
setting), the sha256 of the labelled rows, the folds, the test and the dev rows. A source is
current when folds 0..k-1 and its outputs exist, all record one config hash (the one the config
gives now, for a candidate), and every recorded input hash is today's; an ensemble also needs its
members current and unchanged since it was built, a tuned variant its base. Anything else is a
list of reasons and the command that fixes them. Package versions are recorded, never compared.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..candidates import candidate_class
from ..data.folds import check_folds, folds_sha256, labelled_rows
from ..data.loading import load_from_config, rows_sha256
from ..data.predictions import done_folds, list_sources, load_meta, run_dir
from ..errors import FoldMismatch, UnknownCandidate
from ..hashing import config_hash, file_sha256
from ..models.fingerprint import params_models
from ..models.params import Trainer, hashed_settings

INPUT_KEYS = ("data_sha256", "folds_sha256", "test_sha256", "dev_sha256")
# How a reason names each input: "... predicted on another test file".
INPUT_NAMES = {"data_sha256": "other labelled data", "folds_sha256": "another fold split",
               "test_sha256": "another test file", "dev_sha256": "another dev file"}
FOLD_KEYS = ("config_hash", *INPUT_KEYS)
TUNED_SUFFIX = "@tuned"


class StaleSource(FoldMismatch):
    """A source whose stored predictions were not made from the current config and inputs."""


def candidate_seed(config, name: str) -> int:
    """The candidate's own `seed`, else [cv] seed."""
    seed = config.candidate(name).seed
    return config.cv.seed if seed is None else seed


def candidate_settings(config, name: str) -> dict:
    """What a candidate's predictions depend on besides the data: hashed into its config hash."""

    candidate = config.candidate(name)
    # hashed_settings: keys added since a config was written count only once set, so an unchanged
    # competition.toml keeps its config hash (and its results stay current) after an upgrade.
    settings = {"kind": candidate.kind, "params": hashed_settings(candidate.params),
                "augmentations": list(candidate.augmentations), "seed": candidate_seed(config, name)}
    models = params_models(candidate.params)
    if models:
        settings["models"] = models
    picks_by_rouge = isinstance(candidate.params, Trainer) and candidate.params.picks_by_rouge()
    if candidate_class(candidate.kind).uses_metric or picks_by_rouge:
        # Kinds that tune on ROUGE (lead, retrieval), and trainings whose kept checkpoint is chosen by
        # validation ROUGE, change with the metric's settings.
        settings["metric"] = config.metric.scoring()
    if candidate_class(candidate.kind).uses_objective and config.cv.objective != "oof":
        # Counted only when not "oof", so configs written before objectives keep their hash under "oof".
        settings["objective"] = config.cv.objective
    return settings


def candidate_hash(config, name: str) -> tuple[str, dict]:
    """(config hash, settings) of a candidate as competition.toml and its files say now."""

    settings = candidate_settings(config, name)
    augmented = {path: file_sha256(config.resolve(path)) for path in settings["augmentations"]
                 if config.resolve(path).exists()}
    return config_hash({**settings, "augmentation_sha256": augmented}), settings


def input_hashes(config, rows: pd.DataFrame, test: pd.DataFrame, dev: pd.DataFrame | None) -> dict:
    """The current inputs: labelled rows, folds file, test dialogues, hold-out dev rows."""

    return {"data_sha256": rows_sha256(rows), "folds_sha256": folds_sha256(config),
            "test_sha256": rows_sha256(test[["fname", "dialogue"]]),
            "dev_sha256": rows_sha256(dev) if dev is not None else None}


def workspace_inputs(config) -> tuple[dict, int]:
    """(input_hashes, k) of the workspace as it is now, after checking the folds match the data."""

    data = load_from_config(config)
    rows = labelled_rows(config, data)
    folds = check_folds(config, rows)
    dev = data.dev if data.dev is not None and not config.cv.include_dev else None
    return input_hashes(config, rows, data.test, dev), int(folds["fold"].max()) + 1


def fold_is_current(meta: dict | None, wanted: dict) -> bool:
    """A fold's meta records exactly the wanted config hash and input hashes."""
    return meta is not None and all(meta.get(key) == wanted.get(key) for key in FOLD_KEYS)


def wildcard_members(config, folds: Iterable[int]) -> list[str]:
    """What members = ["*"] stands for now: every enabled candidate with predictions for all of
    `folds` (one skipped for lack of CUDA, or half run, is left out rather than failing the
    ensemble), in competition.toml's order."""
    sources, folds = set(list_sources(config)), set(folds)
    return [name for name, candidate in config.candidates.items()
            if candidate.enabled and name in sources and folds <= set(done_folds(config, name))]


def ensemble_members(config, ensemble, folds: Iterable[int]) -> list[str]:
    """The members an [ensembles.NAME] section names now: its list (each name once), or with "*"
    the wildcard's candidates. Part of what makes a built ensemble current."""
    if "*" in ensemble.members:
        return wildcard_members(config, folds)
    return list(dict.fromkeys(ensemble.members))


def rerun_command(config, name: str) -> str:
    """The command that rebuilds `name` on the current config and inputs (run re-runs stale folds
    by itself, no --force needed; a tuned variant is rebuilt by tune)."""
    if name in config.ensembles:
        return f"competition ensemble {name}"
    if name.endswith(TUNED_SUFFIX):
        return f"competition tune {name[:-len(TUNED_SUFFIX)]}"
    return f"competition run {name}"


def missing_source(config, name: str) -> UnknownCandidate:
    """The error for a source with no predictions under runs/: a name competition.toml declares is
    told the command that makes it; any other name the closest declared or run source."""
    where = config.path or "competition.toml"
    declared = [*config.candidates, *config.ensembles]
    if name in declared or (name.endswith(TUNED_SUFFIX) and name[:-len(TUNED_SUFFIX)] in config.candidates):
        return UnknownCandidate(f"{name!r} is in {where} but has no predictions under runs/ yet: "
                                f"run `{rerun_command(config, name)}` first")
    known = list(dict.fromkeys(declared + list_sources(config)))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"sources: {', '.join(known) or 'none yet'}"
    return UnknownCandidate(f"no source {name!r}: not a [candidates.NAME] or [ensembles.NAME] of {where}, "
                            f"nor under runs/ ({hint})")


def input_file(config, key: str) -> str:
    """The file(s) behind an input hash as the config points at them now: the labelled data is
    train plus dev when [cv] include_dev puts dev into the folds."""
    if key == "folds_sha256":
        return config.cv.folds_file
    if key == "data_sha256":
        files = [config.data.train] + ([config.data.dev] if config.cv.include_dev and config.data.dev else [])
        return " and ".join(str(Path(config.data.dir) / file) for file in files)
    file = getattr(config.data, {"test_sha256": "test", "dev_sha256": "dev"}[key])
    return str(Path(config.data.dir) / file) if file else "(none)"


def _listed(folds: list[int]) -> str:
    """"fold 2 was" / "folds 0, 3 were"."""
    return f"fold {folds[0]} was" if len(folds) == 1 else f"folds {', '.join(map(str, folds))} were"


def _inputs_changed(config, key: str) -> str:
    return f"{INPUT_NAMES[key]} than the current {input_file(config, key)}"


def source_problems(config, name: str, hashes: dict, k: int, missing_ok: bool = False,
                    _seen: frozenset = frozenset()) -> list[str]:
    """Why `name`'s stored predictions are not current (an empty list when they are).

    `hashes` are today's input_hashes and `k` today's number of folds. A hash a meta.json does not
    record is not compared (files written by hand or by an older version). `missing_ok` leaves out
    folds not run yet and a test output not chosen yet (cv reports coverage itself); what exists
    is still checked."""
    problems = []
    metas = {fold: load_meta(config, name, fold) for fold in range(k)}
    missing = [fold for fold, meta in metas.items() if meta is None]
    if missing and not missing_ok:
        problems.append(f"{_listed(missing)} not run")
    present = {fold: meta for fold, meta in metas.items() if meta is not None}
    wanted_hash = candidate_hash(config, name)[0] if name in config.candidates else None
    recorded = {meta.get("config_hash") for meta in present.values() if "config_hash" in meta}
    if wanted_hash is not None:
        other = [fold for fold, meta in present.items() if meta.get("config_hash", wanted_hash) != wanted_hash]
        if other:
            problems.append(f"{_listed(other)} made with another config of {name} than competition.toml's now")
    elif len(recorded) > 1:
        problems.append(f"its folds were made with {len(recorded)} different configs")
    for key in INPUT_KEYS:
        other = [fold for fold, meta in present.items() if key in meta and meta[key] != hashes.get(key)]
        if other:
            problems.append(f"{_listed(other)} predicted on {_inputs_changed(config, key)}")
    problems += _output_problems(config, name, hashes, present, wanted_hash, missing_ok)
    source = load_meta(config, name) or {}
    if source.get("kind") == "ensemble" or name in config.ensembles:
        problems += _member_set_problems(config, name, source, k)
        problems += _member_problems(config, name, source, hashes, k, _seen | {name})
    if name.endswith(TUNED_SUFFIX):
        problems += _base_problems(config, name, source, hashes, k)
    return problems


def _output_problems(config, name: str, hashes: dict, folds: dict[int, dict], wanted_hash: str | None,
                     missing_ok: bool) -> list[str]:
    """The chosen test/dev outputs: present, made by the folds' config from today's inputs and
    after the folds they were chosen from last ran."""
    source = load_meta(config, name)
    if source is None or not (run_dir(config, name) / "test.csv").exists():
        return [] if missing_ok else ["no test output yet"]
    problems = []
    made_with = source.get("config_hash")
    fold_hashes = {meta["config_hash"] for meta in folds.values() if "config_hash" in meta}
    # Compared with what the folds record, not with competition.toml: when the config changed and
    # nothing re-ran, folds and test output agree, and the folds' own reason already says so.
    if made_with is not None and fold_hashes and fold_hashes != {made_with}:
        problems.append("the test output was made with another config than its folds")
    elif made_with is not None and not fold_hashes and wanted_hash not in (None, made_with):
        problems.append(f"the test output was made with another config of {name} than competition.toml's now")
    stale = [_inputs_changed(config, key) for key in INPUT_KEYS if key in source and source[key] != hashes.get(key)]
    if stale:
        problems.append(f"the test output was predicted on {' and on '.join(stale)}")
    finished = (source.get("inputs") or {}).get("fold_finished_at")
    if finished is not None and folds:
        rerun = [fold for fold, meta in folds.items()
                 if fold >= len(finished) or meta.get("finished_at") != finished[fold]]
        if rerun:
            problems.append(f"the test output was chosen before {'fold' if len(rerun) == 1 else 'folds'} "
                            f"{', '.join(map(str, rerun))} re-ran")
    return problems


def _member_set_problems(config, name: str, source: dict, k: int) -> list[str]:
    """A built ensemble whose section now names other members: "*" picks up a candidate run since
    (or drops one disabled since), or the listed members were edited."""
    built = source.get("members")
    if name not in config.ensembles or built is None:
        return []
    section = config.ensembles[name]
    now = ensemble_members(config, section, range(k))
    if now == list(built):
        return []
    listed = ", ".join(now) or "no candidate with every fold run"
    what = 'members = ["*"] now stands for' if "*" in section.members else "its members are now"
    return [f"{what} {listed}, but it was built from {', '.join(built)}"]


def _member_problems(config, name: str, source: dict, hashes: dict, k: int, seen: frozenset) -> list[str]:
    problems = []
    recorded = source.get("member_hashes") or {}
    for member in source.get("members") or []:
        if member in seen:
            problems.append(f"member {member!r} is itself")
            continue
        member_problems = source_problems(config, member, hashes, k, _seen=seen)
        if member_problems:
            problems.append(f"member {member!r} is not current ({'; '.join(member_problems)})")
            continue
        now = (load_meta(config, member) or {}).get("config_hash")
        if member in recorded and recorded[member] != now:
            problems.append(f"member {member!r} changed since {name} was built")
    return problems


def _base_problems(config, name: str, source: dict, hashes: dict, k: int) -> list[str]:
    base = source.get("tuned_from") or name[:-len(TUNED_SUFFIX)]
    if base not in config.candidates:
        return []
    wanted = candidate_hash(config, base)[0]
    if source.get("tuned_from_hash", wanted) != wanted:
        return [f"tuned from another config of {base} than competition.toml's now"]
    return []


def require_current(config, name: str, hashes: dict, k: int, role: str = "") -> None:
    """Refuse (StaleSource, one line naming the fix) a source that is not current; `role` names it
    in the message (e.g. "member" of an ensemble)."""
    problems = source_problems(config, name, hashes, k)
    if problems:
        who = f"{role} {name!r}" if role else repr(name)
        raise StaleSource(f"{who} is not current: {'; '.join(problems)}: rerun it with "
                          f"`{rerun_command(config, name)}`")

