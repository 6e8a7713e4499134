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

from ..candidates import kind_names, params_class
from ..choices import listed
from ..data.loading import references
from ..data.predictions import fold_dir, read_meta, run_dir, write_fold, write_source_outputs
from ..data.shift import weighted_mean
from ..errors import CompetitionError
from ..hashing import config_hash
from ..models.modeling import load_tokenizer
from ..models.params import Generation
from ..models.training import finished_fit
from ..progress import progress as show_progress
from ..progress import stage
from ..results.provenance import TUNED_SUFFIX, candidate_hash, fold_is_current
from ..results.tracking import log_tune
from ..run.fold_run import RunContext, make_candidate, prepare, training_rows
from ..run.runner import choose_outputs
from ..text.metric import RougeScorer, get_scorer
from .search import (LENGTH_KEYS, GridSearch, Trial, TrialStore, canonical, check_method, load_space, make_search,
                     setting_key)

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
    base_params: Generation  # the candidate's params (tune refuses a kind without the Generation part)
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
        min_new = [min(cap, int(tokens * min(scale, 1.0)))  # a floor is never stretched, only shrunk
                   for cap, tokens in zip(max_new, self.length_targets.min_new)]
        return {"edges": list(self.length_targets.edges), "max_new_tokens": max_new, "min_new_tokens": min_new}

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


def nested_score(choices: dict[int, Trial], fold_rows: dict[int, float]) -> float:
    """Each held-out fold's choice scored on all that fold's OOF rows, pooled over rows like the
    OOF final it is reported beside (`fold_rows`: each fold's row count, or its rows' objective
    weight). The chosen trials need their full per-fold finals."""
    missing = sorted({t.number for t in choices.values() if t.full_fold_finals is None})
    if missing:
        raise ValueError(f"trial(s) {missing} chosen in the nested loop have no full per-fold finals")
    total = sum(fold_rows[fold] for fold in choices)
    return sum(trial.full_fold_finals[fold] * fold_rows[fold] for fold, trial in choices.items()) / total


def check_trained(context, name: str, wanted: dict, train_rows: dict[int, pd.DataFrame]) -> dict[int, dict]:
    """Each fold's meta.json, refusing (CompetitionError) unless every fold of `name` ran on the
    current config, data and folds (`wanted`) and left its trained model: tuning only loads models."""
    metas = {}
    for fold in range(context.k):
        folder = fold_dir(context.config, name, fold)
        meta = read_meta(folder / "meta.json")
        instance = make_candidate(context, name, folder / "work")
        trains = instance.trained_weights() is not None  # qlora, seq2seq; prompt kinds only load a model
        missing = [f"{what} {path}" for what, path in instance.fit_files().items() if not path.exists()]
        if meta is None or not (folder / "oof.csv").exists():
            problem = "has not run"
        elif not fold_is_current(meta, wanted):
            problem = "was trained on another config, data or folds than now"
        elif trains and finished_fit(instance, train_rows[fold])[1] is None:
            problem = f"has no trained model in {instance.workdir}"
        elif missing:
            problem = f"has no {missing[0]}"
        else:
            metas[fold] = meta
            continue
        raise CompetitionError(f"{name!r} fold {fold} {problem}: run `competition run {name}` first "
                               "(tune re-uses the fold models and never trains them)")
    return metas


def _model_token_counter(params) -> Callable[[list[str]], list[int]]:
    """Token counts in the candidate model's own tokenizer (length targets are in its tokens)."""
    tokenizer = load_tokenizer(params)
    return lambda texts: [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


@dataclass
class TuneOptions:
    """How `competition tune` searches (its options, with the same defaults)."""

    trials: int = 20  # settings scored in all: the untuned one and a resumed search's stored trials included
    space_path: str | Path | None = None  # TOML/JSON {parameter: [values]}; None: the default space
    method: str = "grid"  # grid, or tpe (optuna)
    subsample: int = 200  # OOF rows each trial is scored on, spread over folds
    confirm: int = 3  # best trials (by subsample final) re-scored on all OOF rows
    seed: int = 42  # of the subsample and the search order
    restart: bool = False  # move the stored trials aside and search again


@dataclass
class TunePlan:
    """What the steps share: inputs checked current, the search with its trial store, the fold models
    and each fold's subsample rows."""

    context: RunContext  # the rows, folds, test, dev and their hashes
    name: str
    options: TuneOptions
    base_hash: str  # the base candidate's config hash: NAME@tuned's hash derives from it
    untuned: dict  # the candidate's own setting over the space's keys: the bar to beat
    store: TrialStore
    done: list[Trial]  # every scored trial, the stored ones first
    search: GridSearch  # or its subclass TpeSearch
    scorer: RougeScorer
    models: FoldModels
    sub_positions: dict[int, np.ndarray]  # fold -> positions of its subsample rows among its OOF rows
    row_weights: pd.Series | None = None  # [cv] objective's weight of each labelled row by fname (None: all alike)

    def weights_of(self, rows: pd.DataFrame) -> np.ndarray | None:
        return None if self.row_weights is None else self.row_weights.loc[rows["fname"]].to_numpy()

    def fold_weight(self, fold: int) -> float:
        """How much a fold's OOF rows weigh in a pooled final: their count, or their objective weights' sum."""
        rows = self.models.folds[fold].rows
        return float(len(rows)) if self.row_weights is None else float(self.weights_of(rows).sum())

    def evaluate(self, setting: dict, full: bool) -> tuple[dict[int, float], float, dict[int, list[str]]]:
        """Per-fold finals, the pooled final and the outputs, one fold model in memory at a time; rows
        weigh as [cv] objective says (test-matched: as in cv's test-matched final)."""
        row_finals, weights, outputs = {}, {}, {}
        for fold in self.models.order():
            model = self.models.get(fold)
            rows = model.rows if full else model.rows.iloc[self.sub_positions[fold]]
            with stage(f"tune {self.name} fold {fold} {'OOF' if full else 'subsample'}"):  # names its generate lines
                outputs[fold] = model.predict(rows, setting)
            row_finals[fold] = self.scorer.score(outputs[fold], references(rows)).row_finals  # every reference, like cv
            weights[fold] = self.weights_of(rows)
        finals = {fold: float(weighted_mean(row_finals[fold], weights[fold])) for fold in sorted(row_finals)}
        pooled = weighted_mean(np.concatenate([row_finals[f] for f in finals]),
                               None if self.row_weights is None else np.concatenate([weights[f] for f in finals]))
        return finals, float(pooled), outputs

    def trial_of(self, setting: dict) -> Trial | None:
        return next((t for t in self.done if setting_key(t.setting) == setting_key(setting)), None)


@dataclass
class Confirmation:
    """The confirm step's answer: the choice among the confirmed trials, and the nested score."""

    best: Trial
    untuned: Trial
    nested_choices: dict[int, Trial]
    nested_final: float
    best_oof: dict[int, list[str]] | None  # fold -> the best setting's OOF outputs, when generated here


def tune_candidate(config, name: str, options: TuneOptions | None = None, data_dir=None, progress: bool = True,
                   echo: Callable[[str], None] = print) -> TuneResult:
    """Search generation settings of a trained candidate by the [cv] objective's OOF final; write NAME@tuned."""
    plan = plan_tune(config, name, options or TuneOptions(), data_dir, echo)
    run_trials(plan, progress, echo)
    confirmed = confirm_trials(plan, progress)
    write_tuned(plan, confirmed.best, confirmed.best_oof, progress)
    log_tune(config, name, plan.done, confirmed.best, confirmed.nested_final, confirmed.untuned.full_final, data_dir)
    folds = plan.models.folds.values()
    return TuneResult(plan.done, confirmed.best, confirmed.nested_final, confirmed.nested_choices,
                      confirmed.untuned.full_final,
                      {"subsample_rows": int(sum(len(p) for p in plan.sub_positions.values())),
                       "oof_rows": int(sum(len(m.rows) for m in folds)), "trials_file": str(plan.store.path)},
                      nested_strict=all(t.method == "grid" for t in plan.done))


def plan_tune(config, name: str, options: TuneOptions, data_dir=None, echo: Callable[[str], None] = print) -> TunePlan:
    """Refuse what cannot be tuned (no generation settings, stale or untrained folds, trials scored on
    other inputs), then set up the space, the search over it and the fold models."""
    candidate_config = config.candidate(name)
    base_params = candidate_config.params
    if not isinstance(base_params, Generation):
        tunable = [kind for kind in kind_names() if issubclass(params_class(kind), Generation)]
        raise CompetitionError(f"{name!r} (kind {candidate_config.kind}) has no generation settings to tune: "
                               f"tune a {listed(tunable)} candidate")
    space = load_space(options.space_path, base_params)
    check_method(options.method)  # a missing optuna fails before the data and models load
    context = prepare(config, data_dir)
    base_hash = candidate_hash(context.config, name)[0]
    train_rows = {fold: training_rows(context, name, context.fold_of != fold) for fold in range(context.k)}
    metas = check_trained(context, name, {"config_hash": base_hash, **context.hashes}, train_rows)
    row_weights = context.objective_row_weights
    store = TrialStore(run_dir(config, name + TUNED_SUFFIX) / "trials.jsonl", {
        "candidate": name, "config_hash": base_hash, **context.hashes, "k": context.k,
        "fold_trained_at": [metas[fold].get("finished_at") for fold in range(context.k)],
        "subsample": options.subsample, "seed": options.seed, "metric": config.metric.scoring(),
        **({"objective": config.cv.objective} if row_weights is not None else {})})
    if options.restart and (aside := store.restart()) is not None:
        echo(f"{name}: moved the earlier trials to {aside}; searching again")
    done = store.load()  # refuses trials scored on other inputs
    search = make_search(options.method, space, done, options.seed)
    scorer = get_scorer(config.metric.tokenizer, config.metric.convention, config.metric.multi_ref)
    models = fold_models(context, name, base_params, train_rows, length_control="length_control" in space)
    rng = np.random.default_rng(options.seed)
    per_fold = max(1, options.subsample // context.k)
    sub_positions = {fold: np.sort(rng.permutation(len(model.rows))[:per_fold])
                     for fold, model in models.folds.items()}
    return TunePlan(context, name, options, base_hash, untuned_setting(space, base_params), store, done, search,
                    scorer, models, sub_positions, row_weights)


def fold_models(context, name: str, base_params, train_rows: dict[int, pd.DataFrame],
                length_control: bool) -> FoldModels:
    """The k fold models, not loaded yet; with length targets learnt from each fold's training rows
    when the space searches dynamic length control."""
    count_tokens = _model_token_counter(base_params) if length_control else None
    folds = []
    for fold in range(context.k):
        train, targets = train_rows[fold], None
        if count_tokens is not None:
            targets = learn_length_targets(count_tokens(list(train["dialogue"])), count_tokens(list(train["summary"])))
        folds.append(FoldModel(fold, None, base_params, context.rows[context.fold_of == fold].reset_index(drop=True),
                               targets, count_tokens))
    # Only prediction: a candidate loads the trained model `check_trained` found; fit is never called.
    return FoldModels(folds, lambda fold: make_candidate(context, name, fold_dir(context.config, name, fold) / "work"))


def untuned_setting(space: dict[str, list], base_params) -> dict:
    """The candidate's own values of the space's keys (fixed length at scale 1), in canonical form."""
    values = dataclasses.asdict(base_params)
    untuned = {k: values[k] for k in space if k not in LENGTH_KEYS}  # load_space allowed only the Params' keys
    if "length_control" in space:
        untuned["length_control"] = "fixed"
    if "length_scale" in space:
        untuned["length_scale"] = 1.0
    return canonical(untuned)


def run_trials(plan: TunePlan, progress: bool = True, echo: Callable[[str], None] = print) -> None:
    """Score settings on the subsample rows until --trials are stored (or the space is exhausted),
    the untuned setting first; each trial is appended to trials.jsonl as it ends, so a kill resumes."""
    if plan.done:
        echo(f"{plan.name}: resuming the search, {len(plan.done)} trial(s) already stored in {plan.store.path}")
    has_untuned = plan.trial_of(plan.untuned) is not None
    total = max(plan.options.trials - len(plan.done), 0 if has_untuned else 1)
    with show_progress(total=total, desc=f"tune {plan.name}", unit="trials", enabled=progress) as bar:
        # The untuned setting is the first of the --trials: the bar to beat. A resumed search over a
        # changed space may lack it; it is scored then even if the stored trials fill the budget.
        if not has_untuned:
            run_trial(plan, plan.untuned)
            bar.update()
        while len(plan.done) < plan.options.trials and (setting := plan.search.ask()) is not None:
            run_trial(plan, setting)
            bar.update()


def run_trial(plan: TunePlan, setting: dict) -> Trial:
    """Score one setting on the subsample rows, store it and tell the search."""
    finals, pooled, _ = plan.evaluate(setting, full=False)
    budgets = {fold: model.length_budgets(setting) for fold, model in plan.models.folds.items()}
    number = max((t.number for t in plan.done), default=-1) + 1
    trial = Trial(number, setting, finals, pooled, method=plan.options.method,
                  length_budgets=budgets if any(b is not None for b in budgets.values()) else None)
    plan.store.append(trial)
    plan.done.append(trial)
    plan.search.tell(trial)
    return trial


def confirm_trials(plan: TunePlan, progress: bool = True) -> Confirmation:
    """Score the best --confirm trials (by subsample final) and the untuned one on all OOF rows and
    choose the best of them there: the subsample's optimism becomes visible. Each held-out fold's
    nested choice (made on the other folds) is scored on all its OOF rows too."""
    untuned = plan.trial_of(plan.untuned)
    ranked = sorted(plan.done, key=lambda t: (-t.subsample_final, t.number))
    confirmed = list({setting_key(t.setting): t for t in ranked[:plan.options.confirm] + [untuned]}.values())
    choices = nested_choices(plan.done, sorted(plan.models.folds))
    to_score = {setting_key(t.setting): t for t in confirmed + list(choices.values()) if t.full_fold_finals is None}
    full_outputs = {}
    for trial in show_progress(list(to_score.values()), desc=f"confirm {plan.name}", unit="trials", enabled=progress):
        trial.full_fold_finals, trial.full_final, full_outputs[setting_key(trial.setting)] = plan.evaluate(
            trial.setting, full=True)
        plan.store.append(trial)  # stored, so a resumed search does not score it again
    best = max(confirmed, key=lambda t: (t.full_final, -t.number))
    nested = nested_score(choices, {fold: plan.fold_weight(fold) for fold in plan.models.folds})
    return Confirmation(best, untuned, choices, nested, full_outputs.get(setting_key(best.setting)))


def write_tuned(plan: TunePlan, best: Trial, oof: dict[int, list[str]] | None, progress: bool = False) -> None:
    """Write NAME@tuned like a candidate: per-fold OOF, test and dev, then the test output chosen
    over folds. Everything is generated first; then the old metas go (so a kill never leaves the
    new setting's folds beside an old meta that cv, ensemble and submit accept), the folds are
    written (meta last in each) and the top-level meta last."""
    context, models = plan.context, plan.models
    config, tuned = context.config, plan.name + TUNED_SUFFIX
    kind = config.candidate(plan.name).kind

    def frame(rows: pd.DataFrame, summaries: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"fname": rows["fname"], "summary": summaries})

    outputs = {}
    for fold in show_progress(list(models.order()), desc=f"generate {tuned}", unit="folds", enabled=progress):
        model = models.get(fold)

        def predicted(rows: pd.DataFrame, what: str) -> list[str]:
            with stage(f"{tuned} fold {fold} {what}"):
                return model.predict(rows, best.setting)

        held_out = oof[fold] if oof is not None else predicted(model.rows, "OOF")
        outputs[fold] = {"oof": frame(model.rows, held_out), "test": frame(context.test, predicted(context.test, "test")),
                         "dev": None}
        if context.dev is not None:
            outputs[fold]["dev"] = frame(context.dev, predicted(context.dev, "dev"))
    models.release()

    tuned_hash = config_hash({"tuned_from": plan.base_hash, "setting": best.setting})
    folder = run_dir(config, tuned)
    for stale in [folder / "meta.json", folder / "test.csv", folder / "dev.csv", *folder.glob("fold_*/meta.json")]:
        stale.unlink(missing_ok=True)
    for old_fold in folder.glob("fold_*"):  # left by a search with more folds than now
        if old_fold.is_dir() and old_fold.name not in {f"fold_{fold}" for fold in outputs}:
            shutil.rmtree(old_fold)
    about = {"name": tuned, "kind": kind, "tuned_from": plan.name, "tuned_from_hash": plan.base_hash,
             "setting": best.setting, "config_hash": tuned_hash, **context.hashes}
    for fold, split in sorted(outputs.items()):
        write_fold(config, tuned, fold, split["oof"], split["test"], split["dev"],
                   {**about, "length_budgets": models.folds[fold].length_budgets(best.setting)})
    test, dev, chosen = choose_outputs(context, tuned, plan.scorer)
    write_source_outputs(config, tuned, test, dev, {**about, "k": context.k, **chosen})
