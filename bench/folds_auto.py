"""What `[cv] near_duplicates = "auto"` costs `folds build` against a fixed threshold (0.5, the
default before it), on English DialogSum and on Korean dialogues of the same size.

Rows as in bench/near_duplicates.py: English = the 12,460 train rows with the 500 dev dialogues as
the test; Korean = 12,460 + 500 dialogues made of real Korean dev/test turns (Kiwi sees real text at
full size). Each build runs in its own temporary workspace, alternating fixed and auto (so load on the machine
hits both alike); "cold" empties the process's token memo first (Kiwi tokenises everything, as a
first `folds build` does), "warm" keeps it (tokens known: what the search itself costs).

    .venv/bin/python bench/folds_auto.py [--data ../shared/data] [--repeat 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from near_duplicates import DEV, TRAIN, korean_rows

ROOT = Path(__file__).resolve().parents[1]


def rows_of(language: str, data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from competition.data.loading import read_split

    if language == "en":
        train = read_split(data / "dialogsum-en" / "train.jsonl", "train")
        test = read_split(data / "dialogsum-en" / "dev.jsonl", "dev")[["fname", "dialogue"]]
        return train, test
    made = korean_rows(data / "dialogsum-ko", TRAIN + DEV)
    train = pd.DataFrame({"fname": [f"train_{i}" for i in range(TRAIN)], "dialogue": made[:TRAIN],
                          "summary": "요약", "topic": "t"})
    return train, pd.DataFrame({"fname": [f"test_{i}" for i in range(DEV)], "dialogue": made[TRAIN:]})


def build_seconds(train: pd.DataFrame, test: pd.DataFrame, tokenizer: str, near_duplicates: str, cold: bool) -> float:
    from competition.text import tokenizers
    from competition.workspace.config import load_config
    from competition.data.folds import build_folds

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "data").mkdir()
        train.to_csv(root / "data" / "train.csv", index=False)
        test.to_csv(root / "data" / "test.csv", index=False)
        test[["fname"]].assign(summary="").to_csv(root / "data" / "sample_submission.csv", index=False)
        (root / "competition.toml").write_text(
            f'[data]\ndev = ""\n[metric]\ntokenizer = "{tokenizer}"\n[cv]\nnear_duplicates = {near_duplicates}\n',
            encoding="utf-8")
        if cold:
            tokenizers._token_cache.clear()  # noqa: SLF001 - the bench measures a first tokenisation
        config = load_config(root / "competition.toml")
        start = time.perf_counter()
        build_folds(config, train, test=test)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--languages", default="ko,en")
    parser.add_argument("--states", default="cold,warm", help="cold (tokenise first), warm (tokens known) or both")
    args = parser.parse_args()
    print(f"{'rows':<34}{'tokens':<7}{'fixed 0.5':>11}{'auto':>9}{'auto / fixed':>14}")
    for language in args.languages.split(","):
        train, test = rows_of(language, Path(args.data))
        tokenizer = "kiwi" if language == "ko" else "english"
        times = {("cold", "0.5"): [], ("cold", '"auto"'): [], ("warm", "0.5"): [], ("warm", '"auto"'): []}
        states = args.states.split(",")
        if states == ["warm"]:
            from competition.text.tokenizers import cached_tokens

            cached_tokens(list(train["dialogue"]) + list(test["dialogue"]), tokenizer)  # so every build is warm
        for _ in range(args.repeat):
            for state in states:
                for setting in ("0.5", '"auto"'):
                    times[(state, setting)].append(build_seconds(train, test, tokenizer, setting, state == "cold"))

        for state in states:
            fixed = statistics.median(times[(state, "0.5")])
            auto = statistics.median(times[(state, '"auto"')])
            label = f"{language}: {len(train):,} train + {len(test)} test"
            print(f"{label:<34}{state:<7}{fixed:>10.1f}s{auto:>8.1f}s{auto / fixed:>13.2f}x")


if __name__ == "__main__":
    main()
