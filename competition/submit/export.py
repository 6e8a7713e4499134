"""`competition export NAME`: one trained model (a fold's or the refit one) as a folder that loads
outside this project (for qlora and seq2seq: plain transformers, + peft for an adapter).

The candidate writes its own model (Candidate.export: for qlora the adapter, or with `merge` the
base model with the adapter merged in; for seq2seq the fine-tuned model with the #Tags# added to its
tokenizer) and generation_config.json with the decoding `competition run` used (NAME@tuned's
setting when it is current); README.md, the model card with the config, data hashes and CV scores,
is written here around the kind's own lines. It is all written beside its final place and renamed,
so a kill leaves the previous export or none.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..candidates import candidate_class, kind_names
from ..candidates.base import ExportedModel
from ..data.predictions import fold_dir, load_meta, run_dir
from ..errors import CompetitionError, UnknownCandidate
from ..models.params import Model
from ..results.cv import leaderboard
from ..results.provenance import INPUT_KEYS, TUNED_SUFFIX, candidate_settings, source_problems, workspace_inputs
from ..run.fold_run import build_candidate
from ..stages.search import LENGTH_KEYS

EXPORTS_DIR = "exports"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class ExportError(CompetitionError):
    """Nothing to export (kind without weights, fold not trained) or a bad option."""


@dataclass
class ExportReport:
    """What an export wrote."""

    path: Path
    name: str
    kind: str
    model: str  # "fold 0" ... or "refit"
    merged: bool
    dtype: str | None  # the merged weights' dtype (None: an adapter, or the trained weights as saved)
    generation: dict = field(default_factory=dict)  # generation_config.json's settings
    tuned: bool = False  # the settings are NAME@tuned's
    files: list[str] = field(default_factory=list)
    what: str = "model"  # the export in a word or two ("adapter", "merged model", "model"), for the text line


def exporting_kinds() -> list[str]:
    """The kinds whose candidates declare `exports` (they train weights and write them out)."""
    return [kind for kind in kind_names() if candidate_class(kind).exports]


def check_trains(config, name: str):
    """The candidate's config, refusing kinds that export no weights."""
    candidate = config.candidate(name)
    if not candidate_class(candidate.kind).exports:
        kinds = exporting_kinds()
        raise ExportError(f"{name!r} is kind {candidate.kind!r}, which trains no weights: export works for "
                          f"{', '.join(kinds[:-1])} and {kinds[-1]} candidates")
    return candidate


def trained_candidate(config, name: str, fold: int | None):
    """The candidate object of a trained fold (None: the refit model), refusing kinds without
    weights and models not trained yet."""

    check_trains(config, name)
    folder = (run_dir(config, name) / "refit" if fold is None else fold_dir(config, name, fold)) / "work"
    instance = build_candidate(config, name, folder)
    if not instance.trained_weights().exists() or not (folder / "train.json").exists():
        trained = sorted(int(path.parent.parent.name.split("_")[1])
                         for path in run_dir(config, name).glob("fold_*/work/train.json"))
        which = "the refit model" if fold is None else f"fold {fold}"
        choices = (f"trained folds: {', '.join(map(str, trained))} (--fold K)" if trained
                   else f"run `competition run {name}` first")
        raise ExportError(f"{name}: {which} has no finished training under {folder}: {choices}")
    return instance


def default_fold(config, name: str) -> int | None:
    """The refit model when there is one, else the lowest trained fold."""

    check_trains(config, name)
    if (run_dir(config, name) / "refit" / "work" / "train.json").exists():
        return None
    trained = sorted(int(path.parent.parent.name.split("_")[1])
                     for path in run_dir(config, name).glob("fold_*/work/train.json"))
    if not trained:
        raise ExportError(f"{name}: no trained fold or refit model under {run_dir(config, name)}: "
                          f"run `competition run {name}` first")
    return trained[0]


def decoding_params(config, name: str) -> tuple[object, bool, str]:
    """(params with NAME@tuned's setting applied when it is current, tuned?, a note for the card)."""

    params = config.candidate(name).params
    tuned = load_meta(config, name + TUNED_SUFFIX)
    if not tuned or not tuned.get("setting"):
        return params, False, ""
    hashes, k = workspace_inputs(config)
    problems = source_problems(config, name + TUNED_SUFFIX, hashes, k)
    if problems:
        return params, False, f"{name}{TUNED_SUFFIX} is not current ({'; '.join(problems)}): its setting is not used"
    setting = {key: value for key, value in tuned["setting"].items() if key not in LENGTH_KEYS}
    note = ""
    if tuned["setting"].get("length_control", "fixed") == "dynamic":
        note = (f"{name}{TUNED_SUFFIX} sets max/min_new_tokens per dialogue length (length_control = dynamic), "
                "which one generation config cannot hold: the fixed settings below are used")
    return dataclasses.replace(params, **setting), True, note


def export_model(config, name: str, fold: int | None = None, out: Path | None = None, merge: bool = False,
                 dtype: str = "bf16") -> ExportReport:
    """Write the export of `name`'s fold `fold` (None: the refit model) to `out` (default
    exports/NAME/fold_K or exports/NAME/refit) and return what it wrote. The candidate writes its
    own model (Candidate.export); the model card around it is written here."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: choose {', '.join(DTYPES)}")
    instance = trained_candidate(config, name, fold)
    label = "refit" if fold is None else f"fold {fold}"
    out = Path(out) if out is not None else config.resolve(EXPORTS_DIR) / name / label.replace(" ", "_")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    params, tuned, note = decoding_params(config, name)
    exported = instance.export(partial, params, merge=merge, dtype=DTYPES[dtype])
    report = ExportReport(path=out, name=name, kind=instance.kind, model=label, merged=exported.merged,
                          dtype=exported.dtype, generation=exported.generation, tuned=tuned, what=exported.what)
    (partial / "README.md").write_text(model_card(config, name, fold, instance, report, exported, note),
                                       encoding="utf-8")
    report.files = sorted(path.name for path in partial.iterdir())
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return report


def model_card(config, name: str, fold: int | None, instance, report: ExportReport, exported: ExportedModel,
               note: str) -> str:
    """README.md of an export: what it is, how to load it (the kind's lines), the config, data
    hashes and scores."""

    meta = load_meta(config, name, fold) if fold is not None else load_meta(config, name)
    train = json.loads((instance.workdir / "train.json").read_text(encoding="utf-8"))
    scores = _scores(config, name)
    params = instance.params
    base = [f"base_model: {params.model}"] if isinstance(params, Model) else []
    lines = ["---", f"library_name: {exported.library}", *base, "tags: [summarization, korean]", "---",
             "", f"# {name} ({report.model})", "",
             f"A `{instance.kind}` candidate of the Korean dialogue summarization competition toolkit, exported by "
             f"`competition export {name}`: " + exported.description
             + (f" ({report.dtype})" if report.dtype else "") + f", trained on {train.get('train_rows')} rows.", ""]
    lines += exported.card
    lines += ["## Generation", "", "generation_config.json holds the decoding `competition run` used"
              + (f" (the tuned setting of {name}@tuned)" if report.tuned else "") + ":", "", "```json",
              json.dumps(report.generation, indent=2, sort_keys=True), "```", ""]
    if note:
        lines += [f"Note: {note}.", ""]
    lines += ["## Scores (ROUGE F1 x 100, final = mean of R1, R2, RL)", ""]
    if scores:
        lines += [f"- out-of-fold final, all folds: {_number(scores['oof'])}"
                  + (f" (95% CI {_number(scores['ci95'][0])} to {_number(scores['ci95'][1])})"
                     if scores.get("ci95") and scores["ci95"][0] is not None else ""),
                  f"- test-matched final: {_number(scores['test_matched'])}",
                  f"- folds complete: {scores['folds']}", ""]
    else:
        lines += ["No CV scores: the candidate has no out-of-fold predictions yet.", ""]
    if train.get("curve") and train.get("eval_metric"):
        lines += [f"Validation inside training picked step {train['chosen_step']} of {train['global_step']} by "
                  f"{train['eval_metric']} ({_number(train.get('best_metric'))}).", ""]
    lines += ["## Provenance", "", "| input | sha256 |", "|---|---|"]
    lines += [f"| {key} | {(meta or {}).get(key) or '-'} |" for key in INPUT_KEYS]
    lines += ["", f"Training fingerprint: {train.get('fingerprint')}; config hash: {(meta or {}).get('config_hash')}.",
              "", "## Config", "", "```json",
              json.dumps(candidate_settings(config, name), indent=2, sort_keys=True, ensure_ascii=False, default=str),
              "```", ""]
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _scores(config, name: str) -> dict | None:
    """The leaderboard's OOF and test-matched finals of `name` (None without predictions)."""

    try:
        entry = leaderboard(config, [name])[0]
    except UnknownCandidate:
        return None
    matched = entry.get("test_matched") or {}
    return {"oof": entry["oof"]["final"], "ci95": entry.get("ci95"), "test_matched": matched.get("final"),
            "folds": f"{entry['folds_done']}/{entry['k']}"}
