"""Does the CV rank sources as a private test would? Plain length folds against the default folds
(length + near-duplicate clusters kept whole), on the English DialogSum train.

The stand-in for a private test is the English dev rows with no near-duplicate in train (TF-IDF
cosine < 0.5 to every train dialogue on the metric's tokens): the competition's test barely overlaps
with train, while the dev set does (~18% of its rows have a cosine >= 0.9 neighbour). Each scheme
gets its own temporary workspace: train = the 12,460 train rows, dev = all 500 dev rows (hold-out),
test = the novel dev rows (so the test-matched weights see what the proxy test looks like).
Sources: lead and retrieval variants (turn counts, turn formats, n-grams, top_k) run by the
project's runner, and an MBR and a hill-climb ensemble of them.

Printed per scheme and source: OOF final, test-matched final, proxy (the source's dev predictions,
made by its fold models as for the test, scored on the novel dev rows); then per scheme and CV
score the Spearman of CV with the proxy and the mean |proxy - CV|.

    .venv/bin/python bench/cv_trust.py [--rows N] [--k 5] [--threshold 0.5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "lead1": 'kind = "lead"\nturns = 1',
    "lead2": 'kind = "lead"\nturns = 2',
    "lead3": 'kind = "lead"\nturns = 3',
    "lead2_text": 'kind = "lead"\nturns = 2\nturn_format = "{text}"',
    "lead4_text": 'kind = "lead"\nturns = 4\nturn_format = "{text}"',
    "retrieval_uni": 'kind = "retrieval"\nngram_max = 1',
    "retrieval_bi": 'kind = "retrieval"\nngram_max = 2',
    "retrieval_bi_top5": 'kind = "retrieval"\nngram_max = 2\ntop_k = 5',
    "retrieval_uni_top3": 'kind = "retrieval"\nngram_max = 1\ntop_k = 3',
}
ENSEMBLES = {
    "mbr_all": f'members = {list(CANDIDATES)!r}\nmethod = "mbr"',
    "hill": f'members = {list(CANDIDATES)!r}\nmethod = "hill-climb"\nmax_members = 6',
}
SCHEMES = {"length, plain": 0.0, "length + near-duplicates (default)": None}


def workspace_config(k: int, near_duplicates: float) -> str:
    tables = "\n".join(f"[candidates.{name}]\n{table}\n" for name, table in CANDIDATES.items())
    ensembles = "\n".join(f"[ensembles.{name}]\n{table}\n" for name, table in ENSEMBLES.items())
    return (f'[data]\ntrain = "train.csv"\ndev = "dev.csv"\n\n[metric]\ntokenizer = "english"\n\n'
            f'[cv]\nk = {k}\nbootstrap = 200\nnear_duplicates = {near_duplicates}\n\n{tables}\n{ensembles}'
            ).replace("'", '"')


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--rows", type=int, default=0, help="use the first N train rows (0 = all 12,460)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.5, help="near-duplicate cosine (default folds, proxy)")
    args = parser.parse_args()

    from competition.config import load_config
    from competition.cv import leaderboard
    from competition.data import load_from_config, read_split, references
    from competition.ensemble import run_ensemble
    from competition.folds import build_folds, labelled_rows
    from competition.metric import get_scorer
    from competition.predictions import load_dev
    from competition.runner import run_candidates
    from competition.similarity import nearest, tfidf_vectors

    english = Path(args.data) / "dialogsum-en"
    train = read_split(english / "train.jsonl", "train")
    if args.rows:
        train = train.head(args.rows)
    dev = read_split(english / "dev.jsonl", "dev")
    start = time.perf_counter()
    train_vectors, dev_vectors = tfidf_vectors(list(train["dialogue"]), "english", list(dev["dialogue"]))
    novel = dev[nearest(dev_vectors, train_vectors).similarity < args.threshold].reset_index(drop=True)
    print(f"proxy private test: {len(novel)} of {len(dev)} dev rows have no train dialogue at cosine >= "
          f"{args.threshold:g} ({time.perf_counter() - start:.1f} s)")
    scorer = get_scorer("english", "official", "mean")
    novel_refs = references(novel)
    test = novel.assign(fname="test_" + novel["fname"])[["fname", "dialogue"]]

    results: dict[str, dict[str, dict]] = {}
    for scheme, threshold in SCHEMES.items():
        threshold = args.threshold if threshold is None else threshold
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "data").mkdir()
            train.to_csv(root / "data" / "train.csv", index=False)
            dev.to_csv(root / "data" / "dev.csv", index=False)
            test.to_csv(root / "data" / "test.csv", index=False)
            test[["fname"]].assign(summary="").to_csv(root / "data" / "sample_submission.csv", index=False)
            (root / "competition.toml").write_text(workspace_config(args.k, threshold), encoding="utf-8")
            config = load_config(root / "competition.toml")
            start = time.perf_counter()
            build_folds(config, labelled_rows(config, load_from_config(config)))
            run_candidates(config, list(CANDIDATES), progress=False, echo=lambda line: None)
            for name in ENSEMBLES:
                run_ensemble(config, name)
            board = {entry["name"]: entry for entry in leaderboard(config)}
            results[scheme] = {}
            for name, entry in board.items():
                predicted = load_dev(config, name).drop_duplicates("fname").set_index("fname")["summary"]
                proxy = scorer.score(predicted.loc[novel["fname"]].tolist(), novel_refs).final
                results[scheme][name] = {"oof": entry["oof"]["final"], "matched": entry["test_matched"]["final"],
                                         "dev": entry["dev_final"], "proxy": proxy, "ess": entry["test_matched"]["ess"]}
            print(f"{scheme}: {len(CANDIDATES)} candidates + {len(ENSEMBLES)} ensembles on {args.k} folds of "
                  f"{len(train)} rows in {time.perf_counter() - start:.0f} s")

    names = list(results[next(iter(SCHEMES))])
    print()
    header = f"{'source':<20}" + "".join(f"{'OOF':>7}{'matched':>9}{'dev':>7}{'proxy':>7}  " for _ in SCHEMES)
    print(f"{'':<20}" + "".join(f"{scheme[:29]:<32}" for scheme in SCHEMES))
    print(header)
    for name in sorted(names, key=lambda n: -results[next(reversed(SCHEMES))][n]["proxy"]):
        line = f"{name:<20}"
        for scheme in SCHEMES:
            row = results[scheme][name]
            line += f"{row['oof']:>7.2f}{row['matched']:>9.2f}{row['dev']:>7.2f}{row['proxy']:>7.2f}  "
        print(line)
    print()
    print(f"{'scheme':<38}{'CV score':<14}{'Spearman':>9}{'mean |proxy - CV|':>19}{'mean proxy - CV':>17}")
    for scheme in SCHEMES:
        rows = results[scheme]
        proxy = [rows[n]["proxy"] for n in names]
        for label, key in (("OOF final", "oof"), ("test-matched", "matched"), ("dev (all rows)", "dev")):
            cv = [rows[n][key] for n in names]
            gaps = np.array(proxy) - np.array(cv)
            print(f"{scheme:<38}{label:<14}{spearman(cv, proxy):>9.2f}{np.abs(gaps).mean():>19.2f}{gaps.mean():>17.2f}")
    ess = {scheme: next(iter(results[scheme].values()))["ess"] for scheme in SCHEMES}
    print("test-matched effective sample size: " + ", ".join(f"{s}: {v:,.0f} rows" for s, v in ess.items()))
    print("targets for the default: Spearman >= 0.8 and mean |proxy - CV| <= 2.0")


if __name__ == "__main__":
    main()
