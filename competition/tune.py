"""Decoding search on out-of-fold rows: the fold models exist, only generation is re-run.

In this competition the largest single gains came from decoding (beams, length_penalty, length
targets by dialogue length), and teams tuned them by hand against the public leaderboard. Here
each setting is scored by the OOF final, trials are stored (a killed search resumes), the cheap
subsample score is confirmed on all OOF rows, and the choice is also scored nested (chosen on
k-1 folds, scored on the held-out one) so its optimism is visible.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import CompetitionError
from .search import LENGTH_KEYS, canonical, load_space, make_search, setting_key

TUNED_SUFFIX = "@tuned"
@dataclass
class Trial:
    """One setting's scores: per fold on the subsample rows, and on all OOF rows once confirmed."""

    number: int
    setting: dict
    fold_finals: dict[int, float]  # fold -> final on that fold's subsample rows
    subsample_final: float  # pooled over the subsample rows
    full_final: float | None = None  # pooled over all OOF rows (confirmation)
    full_fold_finals: dict[int, float] | None = None  # fold -> final on all its OOF rows
    length_budgets: dict[int, dict] | None = None  # dynamic length: fold -> per-bin token budgets

    def as_dict(self) -> dict:
        return {"number": self.number, "setting": self.setting, "fold_finals": _str_keys(self.fold_finals),
                "subsample_final": self.subsample_final, "full_final": self.full_final,
                "full_fold_finals": _str_keys(self.full_fold_finals), "length_budgets": _str_keys(self.length_budgets)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Trial":
        return cls(raw["number"], raw["setting"], _int_keys(raw["fold_finals"]), raw["subsample_final"],
                   raw.get("full_final"), _int_keys(raw.get("full_fold_finals")), _int_keys(raw.get("length_budgets")))


def _str_keys(by_fold: dict | None) -> dict | None:
    return None if by_fold is None else {str(k): v for k, v in by_fold.items()}


def _int_keys(by_fold: dict | None) -> dict | None:
    return None if by_fold is None else {int(k): v for k, v in by_fold.items()}


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
    """A fold's trained candidate, loaded once, ready to re-generate with other settings."""

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


@dataclass
class TuneResult:
    trials: list[Trial]
    best: Trial
    nested_final: float
    nested_choices: dict[int, Trial]
    untuned_full_final: float | None = None
    extra: dict = field(default_factory=dict)


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


class TrialStore:
    """trials.jsonl beside the tuned variant: one finished trial per line, appended at once."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> list[Trial]:
        if not self.path.exists():
            return []
        trials = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                trials.append(Trial.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill mid-write
        latest = {setting_key(t.setting): t for t in trials}  # a confirmation rewrites a trial
        return sorted(latest.values(), key=lambda t: t.number)

    def append(self, trial: Trial) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(trial.as_dict(), ensure_ascii=False) + "\n")


def _model_token_counter(params) -> Callable[[list[str]], list[int]]:
    """Token counts in the candidate model's own tokenizer (length targets are in its tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(params.model, trust_remote_code=getattr(params, "trust_remote_code", False))
    return lambda texts: [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _score(scorer, predictions: list[str], references: list[str]) -> np.ndarray:
    """Per-row finals (x100)."""
    return scorer.score(predictions, [[r] for r in references]).row_finals


def tune_candidate(config, name: str, trials: int = 20, space_path: str | Path | None = None, method: str = "grid",
                   subsample: int = 200, confirm: int = 3, seed: int = 42, data_dir=None, progress: bool = True,
                   echo: Callable[[str], None] = print) -> TuneResult:
    """Search generation settings of a trained candidate by OOF final; write NAME@tuned."""
    from tqdm.auto import tqdm

    from . import runner
    from .metric import get_scorer
    from .predictions import done_folds, fold_dir, write_fold, write_source_outputs

    candidate_config = config.candidate(name)
    base_params = candidate_config.params
    if not hasattr(base_params, "num_beams"):
        raise CompetitionError(f"{name!r} (kind {candidate_config.kind}) has no generation settings to tune: "
                               "tune a qlora, seq2seq or prompt candidate")
    space = load_space(space_path, base_params)
    store = TrialStore(fold_dir(config, name + TUNED_SUFFIX, 0).parent / "trials.jsonl")
    done = store.load()
    search = make_search(method, space, done, seed)  # before the models load: a missing optuna fails fast
    context = runner.prepare(config, data_dir)
    missing = [k for k in range(context.k) if k not in done_folds(config, name)]
    if missing:
        raise CompetitionError(f"{name!r} has no trained fold(s) {', '.join(map(str, missing))}: "
                               f"run `competition run {name}` first (tuning re-uses the fold models)")
    scorer = get_scorer(config.metric.tokenizer, config.metric.convention, config.metric.multi_ref)
    count_tokens = _model_token_counter(base_params) if "length_control" in space else None

    fold_models: list[FoldModel] = []
    for fold in range(context.k):
        held_out = context.fold_of == fold
        train = runner._training_rows(context, name, ~held_out)
        instance = runner._make(context, name, fold_dir(config, name, fold) / "work")
        instance.fit(train, fold)  # finds its trained model in workdir; nothing is retrained
        targets = None
        if count_tokens is not None:
            targets = learn_length_targets(count_tokens(list(train["dialogue"])), count_tokens(list(train["summary"])))
        fold_models.append(FoldModel(fold, instance, base_params, context.rows[held_out].reset_index(drop=True),
                                     targets, count_tokens))

    rng = np.random.default_rng(seed)
    sub_positions = {m.fold: np.sort(rng.permutation(len(m.rows))[: max(1, subsample // context.k)])
                     for m in fold_models}

    def evaluate(setting: dict, full: bool) -> tuple[dict[int, float], float, dict[int, list[str]]]:
        finals, pooled, outputs = {}, [], {}
        for model in fold_models:
            rows = model.rows if full else model.rows.iloc[sub_positions[model.fold]]
            predictions = model.predict(rows, setting)
            row_finals = _score(scorer, predictions, list(rows["summary"]))
            finals[model.fold] = float(row_finals.mean())
            pooled.append(row_finals)
            outputs[model.fold] = predictions
        return finals, float(np.concatenate(pooled).mean()), outputs

    def run_trial(setting: dict) -> Trial:
        finals, pooled, _ = evaluate(setting, full=False)
        budgets = {m.fold: m.length_budgets(setting) for m in fold_models}
        trial = Trial(len(done), setting, finals, pooled,
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
    with tqdm(total=max(trials - len(done), 0 if has_untuned else 1), desc=f"tune {name}", unit="trial",
              disable=not progress) as bar:
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
    choices = nested_choices(done, [m.fold for m in fold_models])
    to_score = {setting_key(t.setting): t for t in confirmed + list(choices.values()) if t.full_fold_finals is None}
    for trial in tqdm(to_score.values(), desc=f"confirm {name}", unit="trial", disable=not progress):
        score_in_full(trial)
    best = max(confirmed, key=lambda t: (t.full_final, -t.number))
    nested = nested_score(choices, {m.fold: len(m.rows) for m in fold_models})

    # Write the tuned variant like a candidate: per-fold OOF, test and dev, then the chosen test output.
    tuned = name + TUNED_SUFFIX
    if setting_key(best.setting) in full_outputs:
        outputs = full_outputs[setting_key(best.setting)]
    else:  # confirmed by an earlier run of the search: generate its OOF again
        outputs = evaluate(best.setting, full=True)[2]
    for model in tqdm(fold_models, desc=f"write {tuned}", unit="fold", disable=not progress):
        oof = pd.DataFrame({"fname": model.rows["fname"], "summary": outputs[model.fold]})
        test = pd.DataFrame({"fname": context.test["fname"], "summary": model.predict(context.test, best.setting)})
        dev = None
        if context.dev is not None:
            dev = pd.DataFrame({"fname": context.dev["fname"], "summary": model.predict(context.dev, best.setting)})
        meta = {"name": tuned, "kind": candidate_config.kind, "tuned_from": name, "setting": best.setting,
                "length_budgets": model.length_budgets(best.setting),
                "config_hash": runner._candidate_hash(context, name)[0], **context.hashes}
        write_fold(config, tuned, model.fold, oof, test, dev, meta)
    test, dev, extra = runner._choose_outputs(context, tuned, scorer)
    write_source_outputs(config, tuned, test, dev, {"name": tuned, "kind": candidate_config.kind, "tuned_from": name,
                                                    "setting": best.setting, **extra, **context.hashes})
    return TuneResult(done, best, nested, choices, untuned_trial.full_final,
                      {"subsample_rows": int(sum(len(p) for p in sub_positions.values())),
                       "oof_rows": int(sum(len(m.rows) for m in fold_models)), "trials_file": str(store.path)})
