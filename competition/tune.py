"""Decoding search on out-of-fold rows: the fold models exist, only generation is re-run.

In this competition the largest single gains came from decoding (beams, length_penalty, length
targets by dialogue length), and teams tuned them by hand against the public leaderboard. Here
each setting is scored by the OOF final, trials are stored (a killed search resumes), the cheap
subsample score is confirmed on all OOF rows, and the choice is also scored nested (chosen on
k-1 folds, scored on the held-out one) so its optimism is visible. Fold models are loaded one at
a time (k quantized LLMs do not fit one GPU) and never trained here.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .candidates.parts import Generation, Prompt
from .errors import CompetitionError
from .fold_run import make_candidate, prepare, training_rows
from .progress import progress as show_progress
from .provenance import TUNED_SUFFIX, candidate_hash, fold_is_current
from .runner import choose_outputs
from .search import LENGTH_KEYS, Trial, TrialStore, canonical, check_method, load_space, make_search, setting_key
from .tracking import log_tune

# Why the nested score is optimistic when TPE proposed the settings (reported beside the score).
TPE_NESTED_NOTE = ("optimistic under TPE: which settings were tried was steered by scores that include "
                   "the held-out fold's rows (under --method grid the nested score is strictly nested)")


@dataclass
class LengthTargets:
    """max/min_new_tokens per dialogue-length bin, learnt from a fold's training rows."""

    edges: list[float]  # inner bin edges in dialogue tokens
    max_new: list[int]  # per bin: high quantile of summary tokens
    min_new: list[int]  # per bin: low quantile of summary tokens

    def bin_of(self, dialogue_tokens: int) -> int:
        return int(np.searchsorted(self.edges, dialogue_tokens, side="right"))


def learn_length_targets(dialogue_tokens: list[int], summary_tokens: list[int], bins: int = 4) -> LengthTargets:
    """Bins by dialogue length quantiles; per bin the 95th/10th percentile of summary length."""
    dialogue = np.asarray(dialogue_tokens, dtype=float)
    summary = np.asarray(summary_tokens, dtype=float)
    edges = sorted(set(np.quantile(dialogue, np.linspace(0, 1, bins + 1)[1:-1]).tolist()))
    which = np.searchsorted(edges, dialogue, side="right")
    max_new, min_new = [], []
    for b in range(len(edges) + 1):
        part = summary[which == b] if (which == b).any() else summary
        max_new.append(int(math.ceil(np.percentile(part, 95))))
        min_new.append(int(math.floor(np.percentile(part, 10))))
    return LengthTargets(edges, max_new, min_new)


@dataclass
class FoldModel:
    """A fold's trained candidate (None while not loaded), ready to re-generate with other settings."""

    fold: int
    candidate: Any
    base_params: Any
    rows: pd.DataFrame  # this fold's OOF rows (fname, dialogue, summary, ...)
    length_targets: LengthTargets | None = None
    count_tokens: Callable[[list[str]], list[int]] | None = None

    def length_budgets(self, setting: dict) -> dict | None:
        """Dynamic length control: the bin edges and, per dialogue-length bin, the max (and min)
        new tokens this setting generates with; None for fixed length."""
        if setting.get("length_control", "fixed") != "dynamic":
            return None
        if self.length_targets is None:
            raise ValueError("dynamic length control needs the fold's learnt length targets")
        scale = float(setting.get("length_scale", 1.0))
        max_new = [max(1, math.ceil(tokens * scale)) for tokens in self.length_targets.max_new]
        budgets = {"edges": list(self.length_targets.edges), "max_new_tokens": max_new}
        if hasattr(self.base_params, "min_new_tokens"):  # a floor is never stretched, only shrunk
            budgets["min_new_tokens"] = [min(cap, int(tokens * min(scale, 1.0)))
                                         for cap, tokens in zip(max_new, self.length_targets.min_new)]
        return budgets

    def predict(self, rows: pd.DataFrame, setting: dict) -> list[str]:
        plain = {k: v for k, v in setting.items() if k not in LENGTH_KEYS}
        params = dataclasses.replace(self.base_params, **plain)
        budgets = self.length_budgets(setting)
        if budgets is None:
            self.candidate.params = params
            return self.candidate.predict(rows)
        # Dynamic length: each dialogue-length bin generates with its own token budget.
        bins = [self.length_targets.bin_of(n) for n in self.count_tokens(list(rows["dialogue"]))]
        out: list[str | None] = [None] * len(rows)
        for b in sorted(set(bins)):
            positions = [i for i, x in enumerate(bins) if x == b]
            extra = {key: budgets[key][b] for key in ("max_new_tokens", "min_new_tokens") if key in budgets}
            self.candidate.params = dataclasses.replace(params, **extra)
            for i, text in zip(positions, self.candidate.predict(rows.iloc[positions])):
                out[i] = text
        return out  # type: ignore[return-value]


class FoldModels:
    """The k fold models with at most one in memory: getting a fold releases the model loaded
    before (k quantized LLMs do not fit one GPU, and `competition run` holds one at a time)."""

    def __init__(self, folds: list[FoldModel], make: Callable[[int], Any]):
        self.folds = {model.fold: model for model in folds}
        self._make = make  # fold -> a candidate that loads its trained model on first predict
        self.loaded: int | None = None

    def order(self) -> list[int]:
        """Every fold, the loaded one first: consecutive passes share a load."""
        return sorted(self.folds, key=lambda fold: (fold != self.loaded, fold))

    def get(self, fold: int) -> FoldModel:
        if self.loaded != fold:
            self.release()
            self.folds[fold].candidate = self._make(fold)
            self.loaded = fold
        return self.folds[fold]

    def release(self) -> None:
        """Drop the loaded model and hand its memory back (CUDA's cache too, where torch uses it)."""
        if self.loaded is None:
            return
        self.folds[self.loaded].candidate = None
        self.loaded = None
        gc.collect()
        torch = sys.modules.get("torch")  # never imported just to empty a cache
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class TuneResult:
    trials: list[Trial]
    best: Trial
    nested_final: float
    nested_choices: dict[int, Trial]
    untuned_full_final: float | None = None
    extra: dict = field(default_factory=dict)
    nested_strict: bool = True  # False when TPE proposed settings: see TPE_NESTED_NOTE


def nested_choices(trials: list[Trial], folds: list[int]) -> dict[int, Trial]:
    """Per held-out fold, the trial best on the other folds' subsample rows: no row of the held-out
    fold plays a part in its choice."""
    choices = {}
    for held_out in folds:
        def on_others(trial: Trial) -> float:
            others = [v for k, v in trial.fold_finals.items() if k != held_out]
            return float(np.mean(others)) if others else -1.0

        choices[held_out] = max(trials, key=lambda t: (on_others(t), -t.number))
    return choices


def nested_score(choices: dict[int, Trial], fold_rows: dict[int, int]) -> float:
    """Each held-out fold's choice scored on all that fold's OOF rows, pooled over rows like the
    OOF final it is reported beside. The chosen trials need their full per-fold finals."""
    missing = sorted({t.number for t in choices.values() if t.full_fold_finals is None})
    if missing:
        raise ValueError(f"trial(s) {missing} chosen in the nested loop have no full per-fold finals")
    total = sum(fold_rows[fold] for fold in choices)
    return sum(trial.full_fold_finals[fold] * fold_rows[fold] for fold, trial in choices.items()) / total


def check_trained(context, name: str, wanted: dict, train_rows: dict[int, pd.DataFrame]) -> dict[int, dict]:
    """Each fold's meta.json, refusing (CompetitionError) unless every fold of `name` ran on the
    current config, data and folds (`wanted`) and left its trained model: tuning only loads models."""
    from .predictions import fold_dir, read_meta
    from .training import finished_fit

    metas = {}
    for fold in range(context.k):
        folder = fold_dir(context.config, name, fold)
        meta = read_meta(folder / "meta.json")
        instance = make_candidate(context, name, folder / "work")
        trains = instance.trained_weights() is not None  # qlora, seq2seq; prompt kinds only load a model
        if meta is None or not (folder / "oof.csv").exists():
            problem = "has not run"
        elif not fold_is_current(meta, wanted):
            problem = "was trained on another config, data or folds than now"
        elif trains and finished_fit(instance, train_rows[fold])[1] is None:
            problem = f"has no trained model in {instance.workdir}"
        elif isinstance(instance.params, Prompt) and instance.params.few_shot > 0 and not instance.fewshot_path.exists():
            problem = f"has no few-shot examples {instance.fewshot_path}"
        else:
            metas[fold] = meta
            continue
        raise CompetitionError(f"{name!r} fold {fold} {problem}: run `competition run {name}` first "
                               "(tune re-uses the fold models and never trains them)")
    return metas


def _model_token_counter(params) -> Callable[[list[str]], list[int]]:
    """Token counts in the candidate model's own tokenizer (length targets are in its tokens)."""
    from .modeling import load_tokenizer

    tokenizer = load_tokenizer(params)
    return lambda texts: [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def tune_candidate(config, name: str, trials: int = 20, space_path: str | Path | None = None, method: str = "grid",
                   subsample: int = 200, confirm: int = 3, seed: int = 42, data_dir=None, restart: bool = False,
                   progress: bool = True, echo: Callable[[str], None] = print) -> TuneResult:
    """Search generation settings of a trained candidate by OOF final; write NAME@tuned."""
    from .data import references
    from .metric import get_scorer
    from .predictions import fold_dir, run_dir

    candidate_config = config.candidate(name)
    base_params = candidate_config.params
    if not isinstance(base_params, Generation):
        raise CompetitionError(f"{name!r} (kind {candidate_config.kind}) has no generation settings to tune: "
                               "tune a qlora, seq2seq or prompt candidate")
    space = load_space(space_path, base_params)
    check_method(method)  # a missing optuna fails before the data and models load
    context = prepare(config, data_dir)
    base_hash = candidate_hash(context.config, name)[0]
    train_rows = {fold: training_rows(context, name, context.fold_of != fold) for fold in range(context.k)}
    metas = check_trained(context, name, {"config_hash": base_hash, **context.hashes}, train_rows)
    store = TrialStore(run_dir(config, name + TUNED_SUFFIX) / "trials.jsonl", {
        "candidate": name, "config_hash": base_hash, **context.hashes, "k": context.k,
        "fold_trained_at": [metas[fold].get("finished_at") for fold in range(context.k)],
        "subsample": subsample, "seed": seed, "metric": config.metric.scoring()})
    if restart and (aside := store.restart()) is not None:
        echo(f"{name}: moved the earlier trials to {aside}; searching again")
    done = store.load()  # refuses trials scored on other inputs
    search = make_search(method, space, done, seed)
    scorer = get_scorer(config.metric.tokenizer, config.metric.convention, config.metric.multi_ref)
    count_tokens = _model_token_counter(base_params) if "length_control" in space else None

    folds = []
    for fold in range(context.k):
        train, targets = train_rows[fold], None
        if count_tokens is not None:
            targets = learn_length_targets(count_tokens(list(train["dialogue"])), count_tokens(list(train["summary"])))
        folds.append(FoldModel(fold, None, base_params, context.rows[context.fold_of == fold].reset_index(drop=True),
                               targets, count_tokens))
    # Only prediction: a candidate loads the trained model `check_trained` found; fit is never called.
    models = FoldModels(folds, lambda fold: make_candidate(context, name, fold_dir(config, name, fold) / "work"))

    rng = np.random.default_rng(seed)
    sub_positions = {m.fold: np.sort(rng.permutation(len(m.rows))[: max(1, subsample // context.k)]) for m in folds}

    def evaluate(setting: dict, full: bool) -> tuple[dict[int, float], float, dict[int, list[str]]]:
        """Per-fold finals, the pooled final and the outputs, one fold model in memory at a time."""
        row_finals, outputs = {}, {}
        for fold in models.order():
            model = models.get(fold)
            rows = model.rows if full else model.rows.iloc[sub_positions[fold]]
            outputs[fold] = model.predict(rows, setting)
            row_finals[fold] = scorer.score(outputs[fold], references(rows)).row_finals  # every reference, like cv
        finals = {fold: float(row_finals[fold].mean()) for fold in sorted(row_finals)}
        return finals, float(np.concatenate([row_finals[f] for f in finals]).mean()), outputs

    def run_trial(setting: dict) -> Trial:
        finals, pooled, _ = evaluate(setting, full=False)
        budgets = {m.fold: m.length_budgets(setting) for m in folds}
        number = max((t.number for t in done), default=-1) + 1
        trial = Trial(number, setting, finals, pooled, method=method,
                      length_budgets=budgets if any(b is not None for b in budgets.values()) else None)
        store.append(trial)
        done.append(trial)
        search.tell(trial)
        return trial

    full_outputs: dict[str, dict[int, list[str]]] = {}

    def score_in_full(trial: Trial) -> None:
        """All OOF rows, per fold and pooled; stored, so a resumed search does not redo it."""
        trial.full_fold_finals, trial.full_final, full_outputs[setting_key(trial.setting)] = evaluate(
            trial.setting, full=True)
        store.append(trial)

    untuned = {k: getattr(base_params, k) for k in space if hasattr(base_params, k)}
    if "length_control" in space:
        untuned["length_control"] = "fixed"
    if "length_scale" in space:
        untuned["length_scale"] = 1.0
    untuned = canonical(untuned)
    if done:
        echo(f"{name}: resuming the search, {len(done)} trial(s) already stored in {store.path}")
    has_untuned = any(setting_key(t.setting) == setting_key(untuned) for t in done)
    with show_progress(total=max(trials - len(done), 0 if has_untuned else 1), desc=f"tune {name}", unit="trials",
                       enabled=progress) as bar:
        # The untuned setting is the first of the --trials: the bar to beat. A resumed search over a
        # changed space may lack it; it is scored then even if the stored trials fill the budget.
        if not has_untuned:
            run_trial(untuned)
            bar.update()
        while len(done) < trials and (setting := search.ask()) is not None:
            run_trial(setting)
            bar.update()
    untuned_trial = next(t for t in done if setting_key(t.setting) == setting_key(untuned))

    # Confirm the best few on all OOF rows: the subsample's optimism becomes visible.
    ranked = sorted(done, key=lambda t: (-t.subsample_final, t.number))
    confirmed = list({setting_key(t.setting): t for t in ranked[:confirm] + [untuned_trial]}.values())
    # Nested: each held-out fold's choice (made on the other folds) is scored on its full OOF rows.
    choices = nested_choices(done, sorted(models.folds))
    to_score = {setting_key(t.setting): t for t in confirmed + list(choices.values()) if t.full_fold_finals is None}
    for trial in show_progress(list(to_score.values()), desc=f"confirm {name}", unit="trials", enabled=progress):
        score_in_full(trial)
    best = max(confirmed, key=lambda t: (t.full_final, -t.number))
    nested = nested_score(choices, {m.fold: len(m.rows) for m in folds})

    write_tuned(context, name, best, models, full_outputs.get(setting_key(best.setting)), base_hash, scorer, progress)
    log_tune(config, name, done, best, nested, untuned_trial.full_final, data_dir)
    return TuneResult(done, best, nested, choices, untuned_trial.full_final,
                      {"subsample_rows": int(sum(len(p) for p in sub_positions.values())),
                       "oof_rows": int(sum(len(m.rows) for m in folds)), "trials_file": str(store.path)},
                      nested_strict=all(t.method == "grid" for t in done))


def write_tuned(context, name: str, best: Trial, models: FoldModels, oof: dict[int, list[str]] | None,
                base_hash: str, scorer, progress: bool = False) -> None:
    """Write NAME@tuned like a candidate: per-fold OOF, test and dev, then the test output chosen
    over folds. Everything is generated first; then the old metas go (so a kill never leaves the
    new setting's folds beside an old meta that cv, ensemble and submit accept), the folds are
    written (meta last in each) and the top-level meta last."""
    from .config import config_hash
    from .predictions import run_dir, write_fold, write_source_outputs

    config, tuned = context.config, name + TUNED_SUFFIX
    kind = config.candidate(name).kind

    def frame(rows: pd.DataFrame, summaries: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"fname": rows["fname"], "summary": summaries})

    outputs = {}
    for fold in show_progress(list(models.order()), desc=f"generate {tuned}", unit="folds", enabled=progress):
        model = models.get(fold)
        held_out = oof[fold] if oof is not None else model.predict(model.rows, best.setting)
        outputs[fold] = {"oof": frame(model.rows, held_out),
                         "test": frame(context.test, model.predict(context.test, best.setting)), "dev": None}
        if context.dev is not None:
            outputs[fold]["dev"] = frame(context.dev, model.predict(context.dev, best.setting))
    models.release()

    tuned_hash = config_hash({"tuned_from": base_hash, "setting": best.setting})
    folder = run_dir(config, tuned)
    for stale in [folder / "meta.json", folder / "test.csv", folder / "dev.csv", *folder.glob("fold_*/meta.json")]:
        stale.unlink(missing_ok=True)
    for old_fold in folder.glob("fold_*"):  # left by a search with more folds than now
        if old_fold.is_dir() and old_fold.name not in {f"fold_{fold}" for fold in outputs}:
            shutil.rmtree(old_fold)
    about = {"name": tuned, "kind": kind, "tuned_from": name, "tuned_from_hash": base_hash, "setting": best.setting,
             "config_hash": tuned_hash, **context.hashes}
    for fold, split in sorted(outputs.items()):
        write_fold(config, tuned, fold, split["oof"], split["test"], split["dev"],
                   {**about, "length_budgets": models.folds[fold].length_budgets(best.setting)})
    test, dev, chosen = choose_outputs(context, tuned, scorer)
    write_source_outputs(config, tuned, test, dev, {**about, "k": context.k, **chosen})
