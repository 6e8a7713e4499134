"""Wall time of MBR over 8 members x 12,460 rows (English DialogSum train) against the naive way.

Members are 8 genuinely different cheap summarisers of each dialogue: lead-1/2/3 turns, the last
two turns, the longest turn, first + last turn, TF-IDF retrieval (the summary of the nearest other
training dialogue) and the two turns closest to the dialogue's TF-IDF centroid.

The naive way: rouge-score's RougeScorer, tokenising both texts for every ordered member pair of
every row. It is timed on a subsample of rows and extrapolated to all rows (printed as such).

    .venv/bin/python bench/ensemble.py [--rows N] [--naive-rows 200] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from competition.ensemble import default_workers, mbr_select
from competition.metric import RougeScorer

TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dialogsum-en" / "train.jsonl"


def build_members(dialogues: list[str], summaries: list[str]) -> dict[str, list[str]]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    turns = [[line.strip() for line in d.split("\n") if line.strip()] for d in dialogues]
    members = {
        "lead1": [" ".join(t[:1]) for t in turns],
        "lead2": [" ".join(t[:2]) for t in turns],
        "lead3": [" ".join(t[:3]) for t in turns],
        "last2": [" ".join(t[-2:]) for t in turns],
        "longest": [max(t, key=len) for t in turns],
        "first_last": [" ".join([t[0], t[-1]]) if len(t) > 1 else t[0] for t in turns],
    }
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
    matrix = vectorizer.fit_transform(dialogues)
    neighbours = NearestNeighbors(n_neighbors=2, metric="cosine").fit(matrix)
    _, index = neighbours.kneighbors(matrix)
    members["retrieval"] = [summaries[b if a == row else a] for row, (a, b) in enumerate(index)]
    centroid_top2 = []
    for row, dialogue_turns in enumerate(turns):
        turn_vectors = vectorizer.transform(dialogue_turns)
        similarity = (turn_vectors @ matrix[row].T).toarray().ravel()
        top = sorted(np.argsort(-similarity, kind="stable")[:2])
        centroid_top2.append(" ".join(dialogue_turns[i] for i in top))
    members["centroid_top2"] = centroid_top2
    return members


def naive_seconds(outputs: list[list[str]], rows: list[int]) -> float:
    """rouge-score, tokenising per pair: every ordered pair of members on `rows`."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    start = time.perf_counter()
    for row in rows:
        texts = [member[row] for member in outputs]
        utility = np.zeros(len(texts))
        for i, hyp in enumerate(texts):
            for j, ref in enumerate(texts):
                if i != j:
                    scores = scorer.score(ref, hyp)
                    utility[i] += np.mean([s.fmeasure for s in scores.values()])
        int(np.argmax(utility))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=0, help="rows of train to use (0 = all 12,460)")
    parser.add_argument("--naive-rows", type=int, default=200, help="rows timed the naive way, then extrapolated")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--convention", default="official", choices=["official", "rouge-score"])
    args = parser.parse_args()

    records = [json.loads(line) for line in TRAIN.read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.rows:
        records = records[: args.rows]
    start = time.perf_counter()
    members = build_members([r["dialogue"] for r in records], [r["summary"] for r in records])
    print(f"built {len(members)} members x {len(records)} rows in {time.perf_counter() - start:.1f} s: "
          f"{', '.join(members)}")
    outputs = list(members.values())
    distinct = np.mean([len({m[row] for m in outputs}) for row in range(len(records))])
    print(f"distinct outputs per row: {distinct:.2f} of {len(outputs)}")

    scorer = RougeScorer("english", args.convention, "mean")  # fresh: tokenisation is timed too
    start = time.perf_counter()
    chosen = mbr_select(outputs, scorer, utility="final", workers=args.workers)
    ours = time.perf_counter() - start
    counts = np.bincount(chosen, minlength=len(outputs))
    print(f"ours  ({args.convention}, {args.workers} worker(s)): {ours:.1f} s for {len(records)} rows "
          f"(chosen: {dict(zip(members, counts.tolist()))})")

    sample = np.random.default_rng(0).choice(len(records), min(args.naive_rows, len(records)), replace=False)
    naive = naive_seconds(outputs, sample.tolist())
    extrapolated = naive * len(records) / len(sample)
    print(f"naive (rouge-score, tokenise per pair, {len(outputs) * (len(outputs) - 1)} ordered pairs a row): "
          f"{naive:.1f} s on {len(sample)} rows -> {extrapolated:.0f} s extrapolated to {len(records)} rows")
    print(f"ratio naive / ours: {extrapolated / ours:.1f}x")


if __name__ == "__main__":
    main()
