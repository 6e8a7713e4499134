"""Does the CV rank sources as a private test would, and does the ensemble it builds do best there?
Near-duplicate thresholds 0.5, 0.7, 0.9, off and "auto" (the default), on English DialogSum.

The stand-in for a private test ("test-like dev") is drawn from the English dev rows so that their
similarity to train (TF-IDF cosine to the nearest train dialogue, the metric's tokens) is distributed
as the competition test's: 89% below 0.5, 10% in [0.5, 0.9), 1% at 0.9 or more (the test -> train
figures `folds build` prints for the real test: 11.0% >= 0.5, 1.0% >= 0.9). Every dev row below 0.5
is taken and the two other strata are drawn (seeded) to those shares. "dev novel" (the dev rows
below 0.5) is shown beside it. Each scheme gets its own workspace: train = the 12,460 train rows,
dev = all 500 dev rows (a hold-out), test = the test-like dev dialogues (so "auto" and the
test-matched weights see what the stand-in looks like). Sources: lead with turns 1-4, tuned, and
with the "{text}" format; retrieval by default, top_k 3 and 5, ngram_max 1; an MBR and a
hill-climb ensemble over all ten. The proxy score of a source is its dev predictions (made by its
fold models as for the test) scored on the test-like rows.

Printed per scheme: each source's OOF final, test-matched final (the CV that ranks), test-like and
dev-novel proxy; then Spearman and Kendall of CV with the proxy, mean |proxy - CV|, the share of
source pairs more than 0.5 apart on the proxy that CV orders right, and the hill-climb ensemble's
proxy score. "auto" is also run with [cv] objective = "oof", to show what the objective adds.

    .venv/bin/python bench/cv_trust.py [--rows N] [--k 5] [--schemes 0.5,0.7,0.9,off,auto]
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "lead1": 'kind = "lead"\nturns = 1',
    "lead2": 'kind = "lead"\nturns = 2',
    "lead3": 'kind = "lead"\nturns = 3',
    "lead4": 'kind = "lead"\nturns = 4',
    "lead_tuned": 'kind = "lead"',
    "lead2_text": 'kind = "lead"\nturns = 2\nturn_format = "{text}"',
    "retrieval": 'kind = "retrieval"',
    "retrieval_k3": 'kind = "retrieval"\ntop_k = 3',
    "retrieval_k5": 'kind = "retrieval"\ntop_k = 5',
    "retrieval_uni": 'kind = "retrieval"\nngram_max = 1',
}
ENSEMBLES = {
    "mbr_all": f'members = {list(CANDIDATES)!r}\nmethod = "mbr"',
    "hill": f'members = {list(CANDIDATES)!r}\nmethod = "hill-climb"',
}
# The competition test's similarity to train (`folds build` on the real test): shares of the strata.
TEST_STRATA = ((0.0, 0.5, 0.89), (0.5, 0.9, 0.10), (0.9, 1.01, 0.01))


def workspace_config(k: int, near_duplicates: str, objective: str = "test_matched") -> str:
    tables = "\n".join(f"[candidates.{name}]\n{table}\n" for name, table in CANDIDATES.items())
    ensembles = "\n".join(f"[ensembles.{name}]\n{table}\n" for name, table in ENSEMBLES.items())
    return (f'[data]\ntrain = "train.csv"\ndev = "dev.csv"\n\n[metric]\ntokenizer = "english"\n'
            f'convention = "rouge-score"\n\n[cv]\nk = {k}\nbootstrap = 200\nnear_duplicates = {near_duplicates}\n'
            f'objective = "{objective}"\n\n{tables}\n{ensembles}').replace("'", '"')


def test_like(similarity: np.ndarray, seed: int = 0) -> np.ndarray:
    """Positions of dev rows drawn so that their similarity to train has TEST_STRATA's shares:
    every row of the first stratum, the others drawn without replacement to match."""
    rng = np.random.default_rng(seed)
    low, high, share = TEST_STRATA[0]
    first = np.flatnonzero((similarity >= low) & (similarity < high))
    total = len(first) / share
    chosen = [first]
    for low, high, share in TEST_STRATA[1:]:
        stratum = np.flatnonzero((similarity >= low) & (similarity < high))
        chosen.append(rng.choice(stratum, min(len(stratum), max(1, round(total * share))), replace=False))
    return np.sort(np.concatenate(chosen))


def pair_agreement(cv: list[float], proxy: list[float], margin: float = 0.5) -> tuple[float, int]:
    """Share of source pairs more than `margin` apart on the proxy that CV orders the same way."""
    pairs = [(i, j) for i, j in itertools.combinations(range(len(cv)), 2) if abs(proxy[i] - proxy[j]) > margin]
    right = sum((cv[i] - cv[j]) * (proxy[i] - proxy[j]) > 0 for i, j in pairs)
    return (right / len(pairs) if pairs else float("nan")), len(pairs)


def run_scheme(root: Path, k: int, near_duplicates: str, frames: dict, scorer, proxies: dict,
               objective: str = "test_matched", echo=print) -> dict:
    """Build the workspace (unless it is there), run every source and score it; per source its CV and proxies."""
    from competition.workspace.config import load_config
    from competition.results.cv import leaderboard
    from competition.data.loading import load_from_config
    from competition.run.ensemble import run_ensemble
    from competition.data.folds import build_folds, folds_info, labelled_rows
    from competition.data.predictions import load_dev
    from competition.run.runner import run_candidates

    data = root / "data"
    if not data.exists():
        data.mkdir(parents=True)
        for name, frame in frames.items():
            frame.to_csv(data / f"{name}.csv", index=False)
    (root / "competition.toml").write_text(workspace_config(k, near_duplicates, objective), encoding="utf-8")
    config = load_config(root / "competition.toml")
    start = time.perf_counter()
    if not (root / "folds" / "folds.csv").exists():
        build_folds(config, labelled_rows(config, load_from_config(config)))
    folds_s = time.perf_counter() - start
    run_candidates(config, list(CANDIDATES), progress=False, echo=lambda line: None)
    for name in ENSEMBLES:
        run_ensemble(config, name)
    board = {entry["name"]: entry for entry in leaderboard(config)}
    sources = {}
    for name, entry in board.items():
        predicted = load_dev(config, name).drop_duplicates("fname").set_index("fname")["summary"]
        scores = {label: scorer.score(predicted.loc[rows["fname"]].tolist(), refs).final
                  for label, (rows, refs) in proxies.items()}
        sources[name] = {"oof": entry["oof"]["final"], "cv": entry["test_matched"]["final"], **scores}
    grouping = folds_info(config).get("near_duplicates") or {}
    matched = board["lead1"]["test_matched"]
    echo(f"{near_duplicates} (objective {objective}): threshold {grouping.get('threshold', 0)}, unmatched test share "
         f"{matched['unmatched_test_share']:.3f}, ESS {matched['ess']:,.0f}; folds {folds_s:.0f} s, all "
         f"{time.perf_counter() - start:.0f} s")
    return {"sources": sources, "threshold": grouping.get("threshold", 0.0),
            "unmatched": matched["unmatched_test_share"], "ess": matched["ess"]}


def summary(result: dict, proxy: str = "test_like") -> dict:
    from scipy.stats import kendalltau, spearmanr

    names = sorted(result["sources"])
    cv = [result["sources"][n]["cv"] for n in names]
    truth = [result["sources"][n][proxy] for n in names]
    agreement, pairs = pair_agreement(cv, truth)
    return {"spearman": float(spearmanr(cv, truth).statistic), "kendall": float(kendalltau(cv, truth).statistic),
            "mean_abs_gap": float(np.mean(np.abs(np.array(truth) - np.array(cv)))),
            "pairs_right": agreement, "pairs": pairs, "hill": result["sources"]["hill"][proxy],
            "mbr": result["sources"]["mbr_all"][proxy]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--rows", type=int, default=0, help="use the first N train rows (0 = all 12,460)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--schemes", default="0.5,0.7,0.9,off,auto")
    parser.add_argument("--workdir", default="", help="keep the workspaces here (default: a temporary folder)")
    parser.add_argument("--json", dest="json_path", default="", help="also write the figures to this file")
    args = parser.parse_args()

    from competition.data.loading import read_split, references
    from competition.text.metric import get_scorer
    from competition.text.similarity import nearest, tfidf_vectors

    english = Path(args.data) / "dialogsum-en"
    train = read_split(english / "train.jsonl", "train")
    if args.rows:
        train = train.head(args.rows)
    dev = read_split(english / "dev.jsonl", "dev")
    train_vectors, dev_vectors = tfidf_vectors(list(train["dialogue"]), "english", list(dev["dialogue"]))
    similarity = nearest(dev_vectors, train_vectors).similarity
    like = dev.iloc[test_like(similarity)].reset_index(drop=True)
    novel = dev[similarity < 0.5].reset_index(drop=True)
    drawn = similarity[test_like(similarity)]
    print(f"test-like dev: {len(like)} of {len(dev)} dev rows; cosine to train p50 {np.median(drawn):.2f}, "
          f"p95 {np.quantile(drawn, 0.95):.2f}, >= 0.5 {(drawn >= 0.5).mean():.1%}, >= 0.9 {(drawn >= 0.9).mean():.1%} "
          f"(the test: p50 0.29, p95 0.65, 11.0%, 1.0%); dev novel: {len(novel)} rows")
    scorer = get_scorer("english", "rouge-score", "mean")
    proxies = {"test_like": (like, references(like)), "dev_novel": (novel, references(novel))}
    test = like.assign(fname="test_" + like["fname"])[["fname", "dialogue"]]
    frames = {"train": train, "dev": dev, "test": test, "sample_submission": test[["fname"]].assign(summary="")}

    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        base = Path(args.workdir or temporary)
        for scheme in args.schemes.split(","):
            value = {"off": "0", "auto": '"auto"'}.get(scheme, scheme)
            results[scheme] = run_scheme(base / scheme, args.k, value, frames, scorer, proxies)
            if scheme == "auto":
                results["auto, objective oof"] = run_scheme(base / scheme, args.k, value, frames, scorer, proxies,
                                                            objective="oof")

    names = sorted(next(iter(results.values()))["sources"])
    print()
    print(f"{'source':<15}" + "".join(f"{scheme[:22]:>24}" for scheme in results))
    print(f"{'':<15}" + "".join(f"{'OOF':>6}{'CV':>6}{'like':>6}{'novel':>6}" for _ in results))
    for name in sorted(names, key=lambda n: -results[next(iter(results))]["sources"][n]["test_like"]):
        line = f"{name:<15}"
        for result in results.values():
            row = result["sources"][name]
            line += f"{row['oof']:>6.2f}{row['cv']:>6.2f}{row['test_like']:>6.2f}{row['dev_novel']:>6.2f}"
        print(line)
    print()
    print(f"{'scheme':<22}{'threshold':>10}{'unmatched':>10}{'Spearman':>9}{'Kendall':>8}{'|like-CV|':>10}"
          f"{'pairs right':>13}{'hill like':>10}{'hill novel':>11}")
    table = {}
    for scheme, result in results.items():
        figures = summary(result)
        novel_figures = summary(result, "dev_novel")
        table[scheme] = {**figures, "threshold": result["threshold"], "unmatched": result["unmatched"],
                         "ess": result["ess"], "hill_novel": novel_figures["hill"],
                         "spearman_novel": novel_figures["spearman"], "sources": result["sources"]}
        print(f"{scheme:<22}{result['threshold']:>10g}{result['unmatched']:>10.3f}{figures['spearman']:>9.2f}"
              f"{figures['kendall']:>8.2f}{figures['mean_abs_gap']:>10.2f}"
              f"{figures['pairs_right']:>8.0%} of {figures['pairs']:<3}{figures['hill']:>10.2f}{novel_figures['hill']:>11.2f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(table, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
