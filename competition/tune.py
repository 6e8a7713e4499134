"""Decoding search on out-of-fold rows: the fold models exist, only generation is re-run.

In this competition the largest single gains came from decoding (beams, length_penalty, length
targets by dialogue length), and teams tuned them by hand against the public leaderboard. Here
each setting is scored by the OOF final, trials are stored (a killed search resumes), the cheap
subsample score is confirmed on all OOF rows, and the choice is also scored nested (chosen on
k-1 folds, scored on the held-out one) so its optimism is visible.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import CompetitionError, ConfigError

TUNED_SUFFIX = "@tuned"
# Generation parameters a setting may change; "length_control"/"length_scale" are ours (below).
GENERATION_KEYS = ("num_beams", "length_penalty", "no_repeat_ngram_size", "repetition_penalty",
                   "max_new_tokens", "min_new_tokens", "length_control", "length_scale")
DEFAULT_SPACE = {
    "num_beams": [1, 4],
    "length_penalty": [0.5, 1.0, 1.5],
    "no_repeat_ngram_size": [0, 3],
    "repetition_penalty": [1.0, 1.2],
    "length_control": ["fixed", "dynamic"],
}


@dataclass
class Trial:
    """One setting's scores: per fold on the subsample rows, and on all OOF rows once confirmed."""

    number: int
    setting: dict
    fold_finals: dict[int, float]  # fold -> final on that fold's subsample rows
    subsample_final: float  # pooled over the subsample rows
    full_final: float | None = None  # pooled over all OOF rows (confirmation)

    def as_dict(self) -> dict:
        return {"number": self.number, "setting": self.setting,
                "fold_finals": {str(k): v for k, v in self.fold_finals.items()},
                "subsample_final": self.subsample_final, "full_final": self.full_final}

    @classmethod
    def from_dict(cls, raw: dict) -> "Trial":
        return cls(raw["number"], raw["setting"], {int(k): v for k, v in raw["fold_finals"].items()},
                   raw["subsample_final"], raw.get("full_final"))


def setting_key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def load_space(path: str | Path | None, params) -> dict[str, list]:
    """The search space: {parameter: [values]} from a TOML/JSON file, else DEFAULT_SPACE, limited
    to what the candidate's Params can take."""
    if path is None:
        space = dict(DEFAULT_SPACE)
    else:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"search space file {path} not found")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            space = json.loads(text)
        else:
            import tomllib

            space = tomllib.loads(text)
        space = space.get("space", space)
    names = {f.name for f in dataclasses.fields(params)}
    problems = []
    for key, values in space.items():
        if key not in GENERATION_KEYS:
            problems.append(f"{key!r} is not a generation parameter ({', '.join(GENERATION_KEYS)})")
        elif key not in names and key not in ("length_control", "length_scale"):
            problems.append(f"{key!r} is not a parameter of this candidate's kind")
        elif not isinstance(values, list) or not values:
            problems.append(f"{key} should be a non-empty list of values")
    if problems:
        raise ConfigError("search space: " + "; ".join(problems))
    return space


def canonical(setting: dict) -> dict:
    """length_scale only matters with dynamic length control: fixed settings carry scale 1.0."""
    if setting.get("length_control", "fixed") == "fixed" and "length_scale" in setting:
        return {**setting, "length_scale": 1.0}
    return setting


def grid(space: dict[str, list]) -> list[dict]:
    """Every distinct setting of the space (settings equal after `canonical` appear once)."""
    keys = sorted(space)
    settings = [canonical(dict(zip(keys, values))) for values in itertools.product(*(space[k] for k in keys))]
    return list({setting_key(s): s for s in settings}.values())


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

    def predict(self, rows: pd.DataFrame, setting: dict) -> list[str]:
        plain = {k: v for k, v in setting.items() if k not in ("length_control", "length_scale")}
        params = dataclasses.replace(self.base_params, **plain)
        if setting.get("length_control", "fixed") != "dynamic" or self.length_targets is None:
            self.candidate.params = params
            return self.candidate.predict(rows)
        # Dynamic length: each dialogue-length bin generates with its own token budget.
        scale = float(setting.get("length_scale", 1.0))
        bins = [self.length_targets.bin_of(n) for n in self.count_tokens(list(rows["dialogue"]))]
        out: list[str | None] = [None] * len(rows)
        for b in sorted(set(bins)):
            positions = [i for i, x in enumerate(bins) if x == b]
            budget = max(1, int(math.ceil(self.length_targets.max_new[b] * scale)))
            extra = {"max_new_tokens": budget}
            if "min_new_tokens" in {f.name for f in dataclasses.fields(params)}:
                extra["min_new_tokens"] = min(budget, int(self.length_targets.min_new[b] * min(scale, 1.0)))
            self.candidate.params = dataclasses.replace(params, **extra)
            for i, text in zip(positions, self.candidate.predict(rows.iloc[positions])):
                out[i] = text
        return out  # type: ignore[return-value]


@dataclass
class TuneResult:
    trials: list[Trial]
    best: Trial
    nested_final: float
    nested_choices: dict[int, dict]
    untuned_full_final: float | None = None
    extra: dict = field(default_factory=dict)


def nested_score(trials: list[Trial], folds: list[int]) -> tuple[float, dict[int, dict]]:
    """Per held-out fold: the setting best on the other folds, scored on the held-out one."""
    scores, choices = [], {}
    for held_out in folds:
        def on_others(trial: Trial) -> float:
            others = [v for k, v in trial.fold_finals.items() if k != held_out]
            return float(np.mean(others)) if others else -1.0

        chosen = max(trials, key=lambda t: (on_others(t), -t.number))
        choices[held_out] = chosen.setting
        scores.append(chosen.fold_finals[held_out])
    return float(np.mean(scores)), choices


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


def propose(space: dict[str, list], done: list[Trial], count: int, method: str, seed: int) -> list[dict]:
    """The next settings to try: grid order (shuffled by seed when the grid is larger than the
    trial budget) or optuna's TPE over the same choices, skipping settings already tried."""
    tried = {setting_key(t.setting) for t in done}
    if method == "grid":
        settings = grid(space)
        random.Random(seed).shuffle(settings)
        return [s for s in settings if setting_key(s) not in tried][:count]
    if method != "tpe":
        raise ConfigError(f"unknown search method {method!r}: choose grid or tpe")
    try:
        import optuna
    except ImportError:
        raise CompetitionError("--method tpe needs optuna: pip install optuna (or use --method grid)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in space.items()}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for trial in done:
        if all(k in trial.setting and trial.setting[k] in space[k] for k in space):
            study.add_trial(optuna.trial.create_trial(params={k: trial.setting[k] for k in space},
                                                      distributions=distributions, value=trial.subsample_final))
    proposals: list[dict] = []
    attempts = 0
    while len(proposals) < count and attempts < count * 20:
        attempts += 1
        asked = study.ask(distributions)
        setting = canonical({k: asked.params[k] for k in sorted(space)})
        if setting_key(setting) in tried or setting in proposals:
            study.tell(asked, state=optuna.trial.TrialState.PRUNED)
            continue
        proposals.append(setting)
        study.tell(asked, state=optuna.trial.TrialState.PRUNED)
    return proposals


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

    store = TrialStore(fold_dir(config, name + TUNED_SUFFIX, 0).parent / "trials.jsonl")
    done = store.load()
    untuned = {k: getattr(base_params, k) for k in space if hasattr(base_params, k)}
    if "length_control" in space:
        untuned["length_control"] = "fixed"
    if "length_scale" in space:
        untuned["length_scale"] = 1.0
    proposals = propose(space, done, max(0, trials - len(done)), method, seed)
    if not any(setting_key(t.setting) == setting_key(untuned) for t in done) and untuned not in proposals:
        proposals.insert(0, untuned)  # the untuned setting is always a trial: the bar to beat
    if done:
        echo(f"{name}: resuming the search, {len(done)} trial(s) already stored in {store.path}")
    for setting in tqdm(proposals, desc=f"tune {name}", unit="trial", disable=not progress):
        finals, pooled, _ = evaluate(setting, full=False)
        trial = Trial(len(done), setting, finals, pooled)
        store.append(trial)
        done.append(trial)

    # Confirm the best few on all OOF rows: the subsample's optimism becomes visible.
    ranked = sorted(done, key=lambda t: (-t.subsample_final, t.number))
    to_confirm = {setting_key(t.setting): t for t in ranked[:confirm]}
    to_confirm.setdefault(setting_key(untuned), next(t for t in done if setting_key(t.setting) == setting_key(untuned)))
    full_outputs: dict[str, dict[int, list[str]]] = {}
    for key, trial in tqdm(to_confirm.items(), desc=f"confirm {name}", unit="trial", disable=not progress):
        _, trial.full_final, full_outputs[key] = evaluate(trial.setting, full=True)
        store.append(trial)
    best = max(to_confirm.values(), key=lambda t: (t.full_final, -t.number))
    nested, choices = nested_score(done, [m.fold for m in fold_models])
    untuned_trial = next(t for t in done if setting_key(t.setting) == setting_key(untuned))

    # Write the tuned variant like a candidate: per-fold OOF, test and dev, then the chosen test output.
    tuned = name + TUNED_SUFFIX
    outputs = full_outputs[setting_key(best.setting)]
    for model in tqdm(fold_models, desc=f"write {tuned}", unit="fold", disable=not progress):
        oof = pd.DataFrame({"fname": model.rows["fname"], "summary": outputs[model.fold]})
        test = pd.DataFrame({"fname": context.test["fname"], "summary": model.predict(context.test, best.setting)})
        dev = None
        if context.dev is not None:
            dev = pd.DataFrame({"fname": context.dev["fname"], "summary": model.predict(context.dev, best.setting)})
        meta = {"name": tuned, "kind": candidate_config.kind, "tuned_from": name, "setting": best.setting,
                "config_hash": runner._candidate_hash(context, name)[0], **context.hashes}
        write_fold(config, tuned, model.fold, oof, test, dev, meta)
    test, dev, extra = runner._choose_outputs(context, tuned, scorer)
    write_source_outputs(config, tuned, test, dev, {"name": tuned, "kind": candidate_config.kind, "tuned_from": name,
                                                    "setting": best.setting, **extra, **context.hashes})
    return TuneResult(done, best, nested, choices, untuned_trial.full_final,
                      {"subsample_rows": int(sum(len(p) for p in sub_positions.values())),
                       "oof_rows": int(sum(len(m.rows) for m in fold_models)), "trials_file": str(store.path)})
