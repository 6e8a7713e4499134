"""The candidate interface: the runner owns folds, files, caching and progress; a kind only
learns from training rows and writes summaries for rows.

A candidate is built in one step: its kind's class with the params, workdir, seed and the
FoldInputs of its run (run.fold_run.make_candidate builds every one), so nobody sets attributes on
it afterwards. What a kind can do is declared here (uses_metric, trained_weights(), exports,
needs_cuda() from its Placement part), and every stage asks these instead of its kind's name.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..models.params import Placement
from ..text.metric import MetricConfig

if TYPE_CHECKING:
    from ..models.validation import RowGroups


@dataclass(frozen=True)
class FoldInputs:
    """What a run gives a candidate besides its own settings (the defaults: a candidate built alone)."""

    # The workspace's [metric]: kinds that tune, select or validate by ROUGE score with it.
    metric: MetricConfig = field(default_factory=MetricConfig)
    # Texts of every split of the workspace (labelled, test, dev): a kind that grows its vocabulary
    # (seq2seq's #Tag# tokens) must know the tags test rows will bring.
    vocabulary_texts: tuple[str, ...] = ()
    refresh: bool = False  # `run --refresh`: ask again what a cache of answers holds (api)
    # The near-duplicate clusters and augmentation sources a validation split inside training keeps
    # together; None = every row on its own.
    row_groups: RowGroups | None = None
    # For kinds that use_objective: each labelled row's weight under [cv] objective (by fname, the
    # weights of cv's test-matched final); None = all alike.
    row_weights: pd.Series | None = None
    # Extra transformers TrainerCallbacks for the kinds that train (a caller's own: tests stop or watch a training).
    trainer_callbacks: tuple = ()


@dataclass(frozen=True)
class ExportedModel:
    """What a kind's `export` wrote: the words `competition export` and the model card use."""

    what: str  # the export in a word or two: "adapter", "merged model", "model"
    description: str  # the card's "exported ...: <description>", e.g. "the LoRA adapter as trained"
    generation: dict  # the decoding settings the folder holds (generation_config.json)
    library: str = "transformers"  # the card's library_name: what loads the folder
    merged: bool = False  # an adapter merged into its base model
    dtype: str | None = None  # the weights' dtype when the export chose one (a merge), else None
    card: tuple[str, ...] = ()  # the card's lines on loading the folder and on the inputs the model was given


class Candidate(ABC):
    """One candidate model. Subclasses set `kind` and implement `fit` and `predict`.

    `workdir` is a folder private to this candidate and fold (adapters, checkpoints, caches);
    it persists across runs, so a killed training can resume from it.
    """

    kind: str = ""
    uses_metric: bool = False  # True: its outputs depend on [metric] (it tunes or selects by ROUGE)
    uses_objective: bool = False  # True: it tunes on its training rows by ROUGE weighted by [cv] objective
    exports: bool = False  # True: `export` writes its trained model as a folder that loads outside this project

    def __init__(self, name: str, params: Any, workdir: Path, seed: int = 42, inputs: FoldInputs | None = None):
        self.name = name
        self.params = params
        self.workdir = Path(workdir)
        self.seed = seed
        self.inputs = FoldInputs() if inputs is None else inputs
        # What the last predict did (fallbacks, truncations): recorded per split in the fold's meta.json.
        self.report: dict = {}

    @abstractmethod
    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        """Learn from `train_rows` (fname, dialogue, summary, topic). fold None = all data."""

    @abstractmethod
    def predict(self, rows: pd.DataFrame) -> list[str]:
        """One summary per row of `rows` (fname, dialogue, ...), in order."""

    @classmethod
    def retry_reason(cls, reports: dict) -> str | None:
        """Why a finished fold must predict again although nothing changed (e.g. answers an endpoint
        left empty), from the reports its meta.json recorded; None keeps it."""
        return None

    def training_inputs(self) -> dict:
        """What a trained model depends on beyond its params and rows (e.g. added tokens); part of
        its training fingerprint, so a change retrains."""
        return {}

    def trained_weights(self) -> Path | None:
        """The file a finished training saves (train.json beside it marks the fold trained); None for
        kinds that train nothing (tune and export then have no weights to look for)."""
        return None

    def fit_files(self) -> dict[str, Path]:
        """What `fit` leaves besides trained weights that `predict` reads, by name ({"few-shot
        examples": path}): tune, which only predicts, refuses a fold that lacks one."""
        return {}

    def export(self, folder: Path, decoding: Any, merge: bool = False, dtype: str = "bfloat16") -> ExportedModel:
        """Write the trained model (workdir's) into `folder` so it loads without this project, its
        generation settings those of `decoding` (the params, a tuned setting applied); `merge`: an
        adapter merged into its base, in `dtype`. Only kinds that declare `exports`."""
        raise NotImplementedError(f"kind {self.kind!r} does not export")

    def needs_cuda(self) -> bool:
        """Whether this configured candidate can only run with CUDA: its Placement's require_cuda."""
        return isinstance(self.params, Placement) and self.params.require_cuda
