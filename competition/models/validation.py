"""Validation inside a fold's training (qlora, seq2seq): rows taken from the training folds only,
their loss and the ROUGE of greedy summaries every `eval_steps`, early stopping on `eval_metric`,
and the best checkpoint kept; train.json records the curve, which `competition cv --curves` draws.

The held-out fold never reaches a training (the runner gives `fit` the other folds' rows), so
validation rows come from those rows: whole near-duplicate clusters (the ones the folds were built
with), and the augmented rows made from a validation row leave the training with it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..data.shift import near_duplicate_clusters
from ..errors import ConfigError
from ..progress import current_stage, stage
from ..text.metric import get_scorer

# The metrics train.json's curve records per step, as the Trainer names them.
CURVE_KEYS = ("loss", "eval_loss", "eval_rouge_final")


@dataclass
class RowGroups:
    """Which rows of a fold's training must fall on the same side of a validation split.

    `labelled`: every labelled row of the workspace (fname, dialogue); their near-duplicate
    clusters at `threshold` on `tokenizer`'s tokens are those the folds were built with (0 = each
    row alone). `source_of`: augmented fname -> the labelled fname it was made from ("" for a
    synthetic row, which only ever trains).
    """

    labelled: pd.DataFrame
    threshold: float = 0.0
    tokenizer: str = "kiwi"
    source_of: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def cluster_of(self) -> dict[str, str]:
        """labelled fname -> its cluster's key (computed once, on first use)."""
        fnames = self.labelled["fname"].astype(str).tolist()
        if self.threshold <= 0:
            return {fname: fname for fname in fnames}

        labels = near_duplicate_clusters(self.labelled["dialogue"].tolist(), self.tokenizer, self.threshold)
        return {fname: f"cluster{label}" for fname, label in zip(fnames, labels)}

    def key(self, fname: str) -> str | None:
        """The group of a training row: its cluster, its source's cluster, or None (synthetic)."""
        if fname in self.source_of:
            source = self.source_of[fname]
            return self.cluster_of.get(source, source) if source else None
        return self.cluster_of.get(fname, fname)


def validation_split(train_rows: pd.DataFrame, eval_rows: float, seed: int,
                     groups: RowGroups | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to train on, validation rows) from a fold's training rows.

    eval_rows: a count (>= 1) or a fraction (< 1) of the labelled rows; 0 = no validation. Whole
    groups are drawn in a seeded order until there are at least that many, so near-duplicates
    never sit on both sides; augmented rows never validate, and leave the training with their source.
    """
    if eval_rows <= 0:
        return train_rows, train_rows.iloc[:0]
    groups = groups or RowGroups(train_rows[["fname", "dialogue"]])
    keys = [groups.key(str(fname)) for fname in train_rows["fname"]]
    labelled = np.array([str(fname) not in groups.source_of for fname in train_rows["fname"]])
    wanted = int(round(eval_rows * labelled.sum())) if eval_rows < 1 else int(eval_rows)
    wanted = max(wanted, 1)
    if wanted >= labelled.sum():
        raise ConfigError(f"eval_rows = {eval_rows:g} asks for {wanted} validation rows but the fold trains on "
                          f"{int(labelled.sum())} labelled rows: lower eval_rows (e.g. 0.05 for 5%)")
    candidates = sorted({key for key, is_labelled in zip(keys, labelled) if is_labelled})
    order = np.random.default_rng(seed).permutation(len(candidates))
    sizes = pd.Series([key for key, is_labelled in zip(keys, labelled) if is_labelled]).value_counts()
    chosen, count = set(), 0
    for index in order:
        if count >= wanted:
            break
        chosen.add(candidates[index])
        count += int(sizes[candidates[index]])
    in_chosen = np.array([key in chosen for key in keys])
    if in_chosen.all():
        raise ConfigError(f"eval_rows = {eval_rows:g}: the fold's training rows form too few near-duplicate "
                          "clusters to keep some for training: lower eval_rows")
    return (train_rows[~in_chosen].reset_index(drop=True),
            train_rows[in_chosen & labelled].reset_index(drop=True))


def validation_inputs(params, metric) -> dict:
    """What a validated training depends on beyond its params: the [metric] settings when the best
    checkpoint is picked by ROUGE (another tokenizer could pick another step)."""
    if params.eval_rows > 0 and params.eval_metric == "rouge_final":
        return {"metric": metric.scoring()}
    return {}


def validation_arguments(params, validating: bool) -> dict:
    """TrainingArguments for validation every eval_steps (a checkpoint at each, so the best can be
    reloaded at the end), the best by eval_metric; {} when nothing validates."""
    if not validating:
        return {}
    steps = params.eval_steps or params.save_steps
    rouge = params.eval_metric == "rouge_final"
    return dict(eval_strategy="steps", eval_steps=steps, save_steps=steps, load_best_model_at_end=True,
                metric_for_best_model="eval_rouge_final" if rouge else "eval_loss", greater_is_better=rouge,
                per_device_eval_batch_size=params.batch_size)


def rouge_callback(summarise: Callable[[object], list[str]], references: Sequence[str], metric):
    """A TrainerCallback adding eval_rouge_final, the final of `summarise(model)` (greedy summaries
    of the validation rows) against `references`, to each evaluation's metrics: it runs before
    the trainer picks the best checkpoint and before early stopping reads them. The value is also
    written into the evaluation's line of the log history (train.json's curve, checkpoints)."""
    from transformers import TrainerCallback

    scorer = get_scorer(metric.tokenizer, metric.convention, metric.multi_ref)

    class ValidationRouge(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            was_training = model.training
            # its own progress line ("NAME fold K validation at step N generate: ..."): the training's
            # bar stands still meanwhile, minutes per validation for a real model on CPU
            with stage(f"{current_stage()} validation at step {state.global_step}".strip()):
                summaries = summarise(model)
            final = scorer.score(summaries, list(references)).final
            model.train(was_training)
            metrics["eval_rouge_final"] = final
            for entry in reversed(state.log_history):  # the evaluation's own line, logged just before
                if entry.get("step") == state.global_step and "eval_loss" in entry:
                    entry["eval_rouge_final"] = final
                    break
            return control

    return ValidationRouge()


def callbacks(params, summarise: Callable[[object], list[str]] | None, references: Sequence[str], metric) -> list:
    """A training's validation callbacks: ROUGE of greedy summaries (when there are rows to
    generate for) and early stopping on eval_metric (early_stopping_patience > 0)."""
    from transformers import EarlyStoppingCallback

    found = [rouge_callback(summarise, references, metric)] if summarise is not None and references else []
    if params.early_stopping_patience > 0:
        found.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    return found


def curve(log_history: list[dict]) -> list[dict]:
    """One point per logged step: {step, loss?, eval_loss?, eval_rouge_final?}, in step order."""
    points: dict[int, dict] = {}
    for entry in log_history:
        values = {key: float(entry[key]) for key in CURVE_KEYS if key in entry}
        if values and "step" in entry:
            points.setdefault(int(entry["step"]), {"step": int(entry["step"])}).update(values)
    return [points[step] for step in sorted(points)]


def validation_report(trainer, eval_rows: pd.DataFrame, params) -> dict:
    """train.json's validation part: the curve, the chosen step (the best by eval_metric, whose
    weights were saved; the last step without validation) and the validation rows' fnames."""
    state = trainer.state
    report = {"curve": curve(state.log_history), "chosen_step": state.global_step}
    if len(eval_rows):
        report.update(chosen_step=state.best_global_step or state.global_step, eval_metric=params.eval_metric,
                      best_metric=state.best_metric, eval_fnames=eval_rows["fname"].astype(str).tolist(),
                      stopped_early=bool(state.global_step < state.max_steps))
    return report


