"""The candidate interface: the runner owns folds, files, caching and progress; a kind only
learns from training rows and writes summaries for rows."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pandas as pd


class Candidate(ABC):
    """One candidate model. Subclasses set `kind` and implement `fit` and `predict`.

    `workdir` is a folder private to this candidate and fold (adapters, checkpoints, caches);
    it persists across runs, so a killed training can resume from it.
    """

    kind: str = ""
    requires_cuda: bool = False  # True: skipped with a clear line on machines without CUDA
    uses_metric: bool = False  # True: its outputs depend on [metric] (it tunes or selects by ROUGE)
    uses_objective: bool = False  # True: it tunes on its training rows by ROUGE weighted by [cv] objective

    def __init__(self, name: str, params: Any, workdir: Path, seed: int = 42):
        self.name = name
        self.params = params
        self.workdir = Path(workdir)
        self.seed = seed
        # Texts of every split of the workspace (labelled, test, dev), set by the runner: a kind that
        # grows its vocabulary (seq2seq's #Tag# tokens) must know the tags test rows will bring.
        self.vocabulary_texts: list[str] = []
        # What the last predict did (fallbacks, truncations): recorded per split in the fold's meta.json.
        self.report: dict = {}
        self.refresh = False  # set by `run --refresh`: ask again what a cache of answers holds (api)
        # Set by the runner: the near-duplicate clusters and augmentation sources a validation split
        # inside training keeps together (validation.RowGroups); None = every row on its own.
        self.row_groups = None
        # Set by the runner for kinds that use_objective: each labelled row's weight under [cv]
        # objective (pd.Series by fname, the weights of cv's test-matched final); None = all alike.
        self.row_weights = None

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

    def needs_cuda(self) -> bool:
        """Whether this configured candidate can only run with CUDA (e.g. 4-bit QLoRA)."""
        return self.requires_cuda
