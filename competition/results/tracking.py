"""MLflow as a view of the workspace: every finished candidate, ensemble and tuned variant, and every
submission, becomes a run of one experiment per workspace, so `mlflow ui` compares them all.

runs/ and submissions/log.csv stay the record; MLflow only shows them. So tracking is optional
([tracking] mlflow = "" is off), a missing mlflow is a one-line note, and any MLflow failure is a
one-line warning that never stops or undoes a command. Each result is logged once: its run carries
a key hashed from the result's files, and finding that key again (a re-run of a current candidate)
logs nothing, while a result made before tracking was turned on is logged the next time it is seen.
For a local sqlite store, the keys logged are also noted in runs/.cache/mlflow/: while nothing else
has written the store since, a result noted there is not looked up again, so a command with nothing
new to log never imports mlflow (about 3 s).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

from ..data.predictions import RUNS_DIR, done_folds, fold_dir, load_meta, load_oof, run_dir
from ..progress import say_once
from ..text.metric import RougeResult
from ..workspace.config import Config
from .cv import leaderboard, oof_scores
from .provenance import TUNED_SUFFIX, candidate_settings

PARAM_VALUE_LIMIT = 500  # MLflow 3 takes 6,000 characters, older servers 500; meta.json has the full value
TAG_VALUE_LIMIT = 5000
ARTIFACTS_DIR = "mlartifacts"  # beside a local sqlite store (MLflow's own name for a server's artifact root)
_PARAMS_PER_BATCH = 100  # MLflow's limit for params + tags in one log_batch
_METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")  # what every MLflow version accepts in a key
_LOG_METRIC_PREFIXES = ("oof_", "matched_", "dev_")  # the log's local scores; public/private beside them
_STALE_RUN_S = 3600  # an unfinished run this old was cut short (a killed command): logged again
_stores: dict[tuple[str, str], tuple[Any, str]] = {}


def tracking_uri(config: Config) -> str | None:
    """[tracking] mlflow, with a relative sqlite path made absolute in the workspace (so every
    command, from any folder, writes the same file); None when tracking is off."""
    uri = config.tracking.mlflow.strip()
    if not uri:
        return None
    prefix = "sqlite:///"
    path = uri[len(prefix):]
    if uri.startswith(prefix) and path and not path.startswith("/") and path != ":memory:":
        return prefix + str(config.resolve(path))
    return uri


def experiment_name(config: Config) -> str:
    """[tracking] experiment, or the workspace folder's name."""
    return config.tracking.experiment.strip() or config.root.name or "competition"


def _sqlite_file(uri: str | None) -> Path | None:
    """The file of a local sqlite store (sqlite:///PATH); None for any other store."""
    prefix = "sqlite:///"
    if uri and uri.startswith(prefix) and uri[len(prefix):] != ":memory:":
        return Path(uri[len(prefix):])
    return None


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside its file; other stores choose their own."""
    database = _sqlite_file(uri)
    return None if database is None else (database.parent / ARTIFACTS_DIR).resolve().as_uri()


def _open(config: Config) -> tuple[Any, str] | None:
    """(MlflowClient, experiment id) of the workspace, opened once per process; None when mlflow is
    not installed (noted once)."""
    uri = tracking_uri(config)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        say_once(f"tracking: [tracking] mlflow = {config.tracking.mlflow!r} but mlflow is not installed: "
             f"pip install -e '.[tracking]' (or set mlflow = \"\" to turn tracking off)")
        return None
    name = experiment_name(config)
    if (uri, name) not in _stores:

        # MLflow's store logs its table migrations at INFO on stderr: noise between our progress lines.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(name, artifact_location=_artifact_location(uri),
                                                         tags={"workspace": str(config.root)})
            except Exception:  # created meanwhile by a parallel command
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        elif experiment.lifecycle_stage != "active":
            raise RuntimeError(f"experiment {name!r} is deleted in {uri}: restore it with `mlflow experiments "
                               f"restore --experiment-id {experiment.experiment_id}` or set [tracking] experiment")
        else:
            experiment_id = experiment.experiment_id
        _stores[(uri, name)] = (client, experiment_id)
    return _stores[(uri, name)]


def _not_logged(what: str, error: Exception) -> None:
    reason = " ".join(str(error).split())[:300]
    say_once(f"tracking: {what} not logged to MLflow ({type(error).__name__}: {reason}); nothing else is "
         f"affected (runs/ and submissions/log.csv are the record); fix [tracking] mlflow or set it to \"\"")


def _store_files(config: Config) -> list[Path] | None:
    """The files of a local sqlite store (the database and its journals); None for any other store."""
    database = _sqlite_file(tracking_uri(config))
    if database is None or not database.name:
        return None
    return [database, *(database.with_name(database.name + suffix) for suffix in ("-journal", "-wal"))]


def _notes_path(config: Config) -> Path:
    """runs/.cache/mlflow/<store and experiment>.tsv: `key TAB run id` of each result logged there."""
    store = json.dumps([tracking_uri(config), experiment_name(config)])
    return config.resolve(RUNS_DIR) / ".cache" / "mlflow" / f"{_result_key(store)[:16]}.tsv"


def _noted_run(config: Config, key: str) -> str | None:
    """The run id noted for `key`, trusted only while the notes are newer than every write to the
    store (a run deleted in `mlflow ui`, a store replaced or removed: looked up again)."""
    files = _store_files(config)
    notes = _notes_path(config)
    if files is None or not files[0].is_file() or not notes.is_file():
        return None
    written = max(path.stat().st_mtime_ns for path in files if path.exists())
    if notes.stat().st_mtime_ns < written:
        return None
    noted = None
    for line in notes.read_text(encoding="utf-8").splitlines():  # the last line of a key: its newest run
        noted_key, _, run_id = line.partition("\t")
        if noted_key == key and run_id:
            noted = run_id
    return noted


def _note_run(config: Config, key: str, run_id: str) -> None:
    """Add `key TAB run id` to the notes (one short append: parallel commands do not mix lines)."""
    if _store_files(config) is None:
        return
    notes = _notes_path(config)
    notes.parent.mkdir(parents=True, exist_ok=True)
    with notes.open("a", encoding="utf-8") as handle:
        handle.write(f"{key}\t{run_id}\n")


def _attempt(config: Config, what: str, action: Callable[[tuple[Any, str]], str | None],
             key: str | None = None) -> str | None:
    """Run `action` on the workspace's store; any failure is one warning, never an exception. With
    the result's `key`, a result noted as logged (see _noted_run) returns its run without the store."""
    if not config.tracking.mlflow.strip():
        return None
    if key is not None and (run_id := _noted_run(config, key)):
        return run_id
    try:
        store = _open(config)
        run_id = None if store is None else action(store)
    except Exception as error:  # MLflow's own errors have no common base worth naming: none may stop a command
        _not_logged(what, error)
        return None
    if key is not None and run_id:
        try:
            _note_run(config, key, run_id)
        except OSError:  # the notes only save time: without them the next command looks the key up
            pass
    return run_id


# --- turning results into keys and values MLflow takes ----------------------------------------------

def _key(name: str) -> str:
    return _BAD_KEY_CHARS.sub("_", name)[:250]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def flatten(value: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: {"a": {"b": 1}} -> {"a.b": "1"}; lists stay one JSON value."""
    flat = {}
    for name, item in value.items():
        key = f"{prefix}{name}"
        if isinstance(item, dict) and item:
            flat.update(flatten(item, key + "."))
        else:
            flat[key] = _text(item)
    return flat


def _number(value: Any) -> float | None:
    """A finite float, or None for what is not a score ("" in the log, None, NaN, text)."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class _Values:
    """Params, metrics (key, value, step) and tags gathered before one run is written."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.metrics: list[tuple[str, float, int]] = []
        self.tags: dict[str, str] = {}

    def metric(self, key: str, value: Any, step: int = 0) -> None:
        number = _number(value)
        if number is not None:
            self.metrics.append((key, number, int(step)))


def _find(store: tuple[Any, str], key: str) -> str | None:
    """The finished run logged under `key`; runs a failed or killed logging left are deleted."""
    client, experiment_id = store
    found = None
    for run in client.search_runs([experiment_id], filter_string=f"tags.result_key = '{key}'", max_results=20):
        cut_short = run.info.status == "FAILED" or (
            run.info.status == "RUNNING" and time.time() * 1000 - run.info.start_time > _STALE_RUN_S * 1000)
        if run.info.status == "FINISHED" and found is None:
            found = run.info.run_id
        elif cut_short:
            client.delete_run(run.info.run_id)
    return found


def _write_run(store: tuple[Any, str], run_name: str, key: str, values: _Values,
               artifacts: list[tuple[Path, str | None]], documents: dict[str, dict] | None = None) -> str:
    """Create the run, send params, metrics and artifacts, and finish it (FAILED if anything broke)."""
    from mlflow.entities import Metric, Param

    client, experiment_id = store
    tags = {_key(name): _clip(str(value), TAG_VALUE_LIMIT) for name, value in values.tags.items()}
    run_id = client.create_run(experiment_id, run_name=run_name, tags={**tags, "result_key": key}).info.run_id
    try:
        params = [Param(_key(name), _clip(value, PARAM_VALUE_LIMIT)) for name, value in values.params.items()]
        for start in range(0, len(params), _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[start:start + _PARAMS_PER_BATCH])
        now = int(time.time() * 1000)
        metrics = [Metric(_key(name), value, now, step) for name, value, step in values.metrics]
        for start in range(0, len(metrics), _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[start:start + _METRICS_PER_BATCH])
        for path, folder in artifacts:
            if path.is_file():
                client.log_artifact(run_id, str(path), folder)
        for name, document in (documents or {}).items():
            client.log_dict(run_id, document, name)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _result_key(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# --- sources: candidates, ensembles, tuned variants -------------------------------------------------

def _fold_values(config: Config, name: str, values: _Values, data_dir) -> list[tuple[Path, str | None]]:
    """Per-fold ROUGE (F1 x 100, the leaderboard's scale), timings and training curves; returns the
    train.json files to keep as artifacts."""

    oof = load_oof(config, name)
    result = oof_scores(config, name, data_dir)
    for fold in sorted(set(oof["fold"].astype(int))):
        part = RougeResult(result.per_row[(oof["fold"].astype(int) == fold).to_numpy()])
        for metric, value in part.f1.items():
            values.metric(f"fold_{fold}/{metric}", value * 100)
        values.metric(f"fold_{fold}/final", part.final)
    artifacts = []
    totals: dict[str, float] = {}
    for fold in done_folds(config, name):
        meta = load_meta(config, name, fold) or {}
        for what, seconds in (meta.get("timings") or {}).items():
            values.metric(f"fold_{fold}/{what}", seconds)
            totals[what] = totals.get(what, 0.0) + (_number(seconds) or 0.0)
        values.metric(f"fold_{fold}/train_rows", (meta.get("rows") or {}).get("train"))
        artifacts += _training_curve(fold_dir(config, name, fold) / "work" / "train.json", f"fold_{fold}", values)
    for what, seconds in totals.items():
        values.metric(f"time/{what}", seconds)
    artifacts += _training_curve(run_dir(config, name) / "refit" / "work" / "train.json", "refit", values)
    return artifacts


def _training_curve(path: Path, prefix: str, values: _Values) -> list[tuple[Path, str | None]]:
    """train.json's logged losses as a step series (competition.models.training.trainer_report)."""
    if not path.is_file():
        return []
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    for step, loss in enumerate(report.get("losses") or []):
        values.metric(f"{prefix}/train_loss", loss, step)
    values.metric(f"{prefix}/global_step", report.get("global_step"))
    return [(path, prefix)]


def _source_key(config: Config, name: str, kind: str, extra: _Values) -> str | None:
    """The key of source `name`'s written result (its meta.json as scored now); None before it has one."""
    meta_path = run_dir(config, name) / "meta.json"
    if not meta_path.is_file():
        return None
    return _result_key(kind, name, meta_path.read_text(encoding="utf-8"), dataclasses.asdict(config.metric),
                       dataclasses.asdict(config.cv), extra.params, extra.metrics, extra.tags)


def _log_source(store: tuple[Any, str], config: Config, name: str, kind: str, key: str, data_dir,
                extra: _Values) -> str | None:
    """One run for source `name` (its result's `key`: _source_key) as cv's leaderboard scores it now."""

    meta_path = run_dir(config, name) / "meta.json"
    found = _find(store, key)
    if found:
        return found
    meta = load_meta(config, name) or {}
    entry = leaderboard(config, [name], data_dir)[0]
    values = _Values()
    settings = meta.get("config") or {}
    values.params.update(flatten(settings.get("params") or {}))  # the kind's own parameters, unprefixed
    values.params.update(flatten({k: v for k, v in settings.items() if k != "params"}))
    values.params.update(flatten({"cv": dataclasses.asdict(config.cv), "metric": dataclasses.asdict(config.metric)}))
    values.params.update(extra.params)
    for metric, value in (entry.get("oof") or {}).items():
        values.metric(f"oof_{metric}", value)
    for which, value in zip(("low", "high"), entry.get("ci95") or []):
        values.metric(f"oof_ci95_{which}", value)
    values.metric("fold_final_mean", entry.get("fold_final_mean"))
    values.metric("fold_final_std", entry.get("fold_final_std"))
    for what, value in (entry.get("test_matched") or {}).items():
        if what == "ci95":
            for which, bound in zip(("low", "high"), value or []):
                values.metric(f"matched_ci95_{which}", bound)
        else:
            values.metric(f"matched_{what}", value)
    for what in ("dev_final", "dev_novel_final", "dev_novel_rows", "rows"):
        values.metric(what, entry.get(what))
    values.metric("time/test_output_s", meta.get("seconds"))
    artifacts = _fold_values(config, name, values, data_dir)
    values.metrics += extra.metrics
    hashes = {what: meta[what] for what in ("data_sha256", "folds_sha256", "test_sha256", "dev_sha256")
              if meta.get(what)}
    values.tags.update({"kind": kind, "source": name, "candidate_kind": meta.get("kind", ""),
                        "config_hash": entry.get("config_hash") or meta.get("config_hash", ""),
                        "complete": str(bool(entry.get("complete"))).lower(),
                        "problems": "; ".join(entry.get("problems") or []), "workspace": str(config.root),
                        **hashes, **extra.tags})
    return _write_run(store, name, key, values, [(meta_path, None), *artifacts])


def _log_source_once(config: Config, what: str, name: str, kind: str, data_dir=None,
                     make_extra: Callable[[], _Values] = _Values) -> str | None:
    """_log_source through _attempt, once source `name` has a written result (None before)."""
    if not config.tracking.mlflow.strip():
        return None
    try:
        extra = make_extra()
        key = _source_key(config, name, kind, extra)
    except Exception as error:  # as in _attempt: tracking never stops a command
        _not_logged(what, error)
        return None
    if key is None:
        return None
    return _attempt(config, what, lambda store: _log_source(store, config, name, kind, key, data_dir, extra), key)


def log_candidate(config: Config, name: str, data_dir=None) -> str | None:
    """Log candidate `name` (params, config hash, OOF, per-fold and test-matched scores, timings,
    training curves); returns the run id, or None when tracking is off or failed (warned)."""
    return _log_source_once(config, f"candidate {name!r}", name, "candidate", data_dir)


def log_ensemble(config: Config, name: str) -> str | None:
    """Log ensemble `name` like a candidate, plus each member's weight."""
    def weights() -> _Values:
        extra = _Values()
        for member, weight in ((load_meta(config, name) or {}).get("weights") or {}).items():
            extra.metric(f"weight/{member}", weight)
        return extra

    return _log_source_once(config, f"ensemble {name!r}", name, "ensemble", None, weights)


def log_tune(config: Config, name: str, trials: list, best, nested_final: float | None,
             untuned_final: float | None, data_dir=None) -> str | None:
    """Log NAME@tuned like a candidate: the base's params with the chosen setting, the nested and
    untuned finals, and every trial's subsample (and confirmed full) final by trial number."""

    def setting_and_trials() -> _Values:
        extra = _Values()
        extra.params.update(flatten(candidate_settings(config, name).get("params") or {}))
        extra.params.update(flatten(best.setting))
        extra.tags["tuned_from"] = name
        extra.metric("nested_final", nested_final)
        extra.metric("untuned_final", untuned_final)
        extra.metric("trials", len(trials))
        extra.metric("best_subsample_final", best.subsample_final)
        extra.metric("best_full_final", best.full_final)
        for trial in sorted(trials, key=lambda t: t.number):
            extra.metric("trial/subsample_final", trial.subsample_final, trial.number)
            extra.metric("trial/full_final", trial.full_final, trial.number)
        return extra

    return _log_source_once(config, f"tuned {name!r}", name + TUNED_SUFFIX, "tuned", data_dir, setting_and_trials)


# --- submissions ------------------------------------------------------------------------------------

def _submission_key(row: dict) -> str:
    return _result_key("submission", row.get("id"), row.get("sha256"), row.get("created_at"))


def _source_run(store: tuple[Any, str], source: str, digest: str) -> str | None:
    """The newest run of the submitted source with the same config hash, to link from the submission."""
    if not source or "'" in source or "'" in digest:
        return None
    client, experiment_id = store
    condition = f"tags.source = '{source}' and tags.kind != 'submission'"
    if digest:
        condition += f" and tags.config_hash = '{digest}'"
    runs = client.search_runs([experiment_id], filter_string=condition, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def _log_submission(store: tuple[Any, str], config: Config, row: dict, path: Path) -> str:
    key = _submission_key(row)
    found = _find(store, key)
    if found:
        return found
    values = _Values()
    values.params.update({"source": row.get("source", ""), "config_hash": row.get("config_hash", "")})
    for column, value in row.items():
        if column.startswith(_LOG_METRIC_PREFIXES) or column in ("public", "private"):
            values.metric(column, value)
    values.tags.update({"kind": "submission", "source": row.get("source", ""), "submission_id": row.get("id", ""),
                        "workspace": str(config.root),
                        **{column: row.get(column, "") for column in ("file", "sha256", "config_hash", "git_commit",
                                                                     "git_dirty", "created_at", "note")}})
    linked = _source_run(store, row.get("source", ""), row.get("config_hash", ""))
    if linked:
        values.tags["source_run_id"] = linked
    run_name = f"{row.get('id', '')}-{row.get('source', '')}"
    return _write_run(store, run_name, key, values, [(Path(path), "submission")],
                      {"log_row.json": {column: str(value) for column, value in row.items()}})


def log_submission(config: Config, row: dict, path: str | Path) -> str | None:
    """Log a submission: its log row (local scores as metrics, the rest as tags), the file as an
    artifact and a link to its source's run; returns the run id, or None (off, or warned)."""
    return _attempt(config, f"submission {row.get('id', '')}",
                    lambda store: _log_submission(store, config, row, Path(path)), _submission_key(row))


def record_leaderboard(config: Config, row: dict, folder: str | Path) -> str | None:
    """Set a submission's public/private scores (from its updated log row) on its run; a submission
    logged before tracking was on gets its run now. `folder` holds the submission files."""
    def action(store):
        key = _submission_key(row)
        run_id = _find(store, key)
        if run_id is None:
            return _log_submission(store, config, row, Path(folder) / row.get("file", ""))
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        scores = [Metric(column, number, now, 0) for column in ("public", "private")
                  if (number := _number(row.get(column))) is not None]
        if scores:
            store[0].log_batch(run_id, metrics=scores)
        return run_id

    return _attempt(config, f"leaderboard scores of submission {row.get('id', '')}", action)
