"""`retrieval`: the summary of the most similar training dialogue (TF-IDF over the metric's
tokens, Kiwi morphemes for Korean), its speaker tags renamed to the new dialogue's speakers.

It only ever searches the rows given to `fit` (the training folds), never the held-out fold.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..models.params import Composed, at_least
from ..progress import progress as show_progress
from ..text.mbr import mbr_select
from ..text.metric import get_scorer
from ..text.tokenizers import cached_tokens
from .base import Candidate

_SPEAKER = re.compile(r"#Person\d+#")


@dataclass
class Params(Composed):
    ngram_max: int = 2  # TF-IDF features: token n-grams of length 1..ngram_max
    min_df: int = 1  # ignore n-grams in fewer training dialogues than this
    sublinear_tf: bool = True  # 1 + log(tf) instead of raw counts
    top_k: int = 1  # 1 = the nearest summary; >1 = of the k nearest, the summary closest (ROUGE) to the others
    remap_speakers: bool = True  # rename #PersonN# in the summary after the new dialogue's speakers
    batch_rows: int = 2000  # query rows per similarity block (memory)

    def check(self) -> list[str]:
        return at_least(self, ("ngram_max", "min_df", "top_k", "batch_rows"), 1)


def speakers_in_order(dialogue: str) -> list[str]:
    """Speaker tags (#PersonN#) in order of first appearance."""
    return list(dict.fromkeys(_SPEAKER.findall(dialogue)))


def remap_speakers(summary: str, source_dialogue: str, target_dialogue: str) -> str:
    """Rename the speakers of `source_dialogue` in `summary` to those of `target_dialogue`, matched
    by order of first appearance (the first speaker of one is the first of the other)."""
    mapping = dict(zip(speakers_in_order(source_dialogue), speakers_in_order(target_dialogue)))
    if all(a == b for a, b in mapping.items()):
        return summary
    return _SPEAKER.sub(lambda match: mapping.get(match.group(0), match.group(0)), summary)


def _features(tokens: list[str], ngram_max: int) -> list[str]:
    features = list(tokens)
    for n in range(2, ngram_max + 1):
        features.extend("\x1f".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return features


class RetrievalCandidate(Candidate):
    kind = "retrieval"
    uses_metric = True  # tokens (and top_k consensus) come from the [metric] settings

    def __init__(self, name, params, workdir, seed=42, inputs=None):
        super().__init__(name, params, workdir, seed, inputs)
        self._vectorizer = None
        self._matrix = None
        self._train: pd.DataFrame | None = None

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        """Index the training dialogues (TF-IDF over n-grams of the metric's tokens)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        ngram_max = self.params.ngram_max
        self._train = train_rows[["fname", "dialogue", "summary"]].reset_index(drop=True)
        tokens = cached_tokens(list(self._train["dialogue"]), self.inputs.metric.tokenizer)
        self._vectorizer = TfidfVectorizer(analyzer=lambda toks: _features(toks, ngram_max),
                                           min_df=self.params.min_df, sublinear_tf=self.params.sublinear_tf)
        self._matrix = self._vectorizer.fit_transform(tokens)
        self.workdir.mkdir(parents=True, exist_ok=True)
        report = {"fold": fold, "rows": int(len(self._train)), "features": int(self._matrix.shape[1])}
        (self.workdir / "retrieval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    def neighbours(self, rows: pd.DataFrame) -> np.ndarray:
        """Positions in the training rows of each row's top_k most similar dialogues, best first."""
        if self._matrix is None:
            raise RuntimeError("retrieval candidate used before fit")
        top_k = min(self.params.top_k, self._matrix.shape[0])
        queries = self._vectorizer.transform(cached_tokens(list(rows["dialogue"]), self.inputs.metric.tokenizer))
        found = np.zeros((len(rows), top_k), dtype=np.int64)
        blocks = range(0, len(rows), self.params.batch_rows)
        # A bar (or a closing line) only where there is more than one block to wait for.
        with show_progress(total=len(rows), desc=f"{self.name} retrieval", enabled=len(blocks) > 1) as bar:
            for start in blocks:
                self._search_block(queries, start, top_k, found)
                bar.update(min(self.params.batch_rows, len(rows) - start))
        return found

    def _search_block(self, queries, start: int, top_k: int, found: np.ndarray) -> None:
        """The top_k nearest training rows of query rows start .. start + batch_rows, into `found`."""
        # Rows are L2-normalised: the dot product is the cosine similarity.
        similarity = (queries[start:start + self.params.batch_rows] @ self._matrix.T).toarray()
        if top_k == 1:
            found[start:start + len(similarity), 0] = similarity.argmax(axis=1)
        else:
            best = np.argpartition(-similarity, top_k - 1, axis=1)[:, :top_k]
            order = np.argsort(-np.take_along_axis(similarity, best, axis=1), axis=1, kind="stable")
            found[start:start + len(similarity)] = np.take_along_axis(best, order, axis=1)

    def predict(self, rows: pd.DataFrame) -> list[str]:
        neighbours = self.neighbours(rows)
        summaries = self._train["summary"].to_numpy()
        dialogues = self._train["dialogue"].to_numpy()
        if neighbours.shape[1] > 1:

            metric = self.inputs.metric
            scorer = get_scorer(metric.tokenizer, metric.convention, metric.multi_ref)
            choice = mbr_select([summaries[neighbours[:, j]].tolist() for j in range(neighbours.shape[1])], scorer)
            picked = neighbours[np.arange(len(rows)), choice]
        else:
            picked = neighbours[:, 0]
        out = []
        for position, dialogue in zip(picked.tolist(), rows["dialogue"]):
            summary = summaries[position]
            if self.params.remap_speakers:
                summary = remap_speakers(summary, dialogues[position], dialogue)
            out.append(summary)
        return out


CANDIDATE = RetrievalCandidate
