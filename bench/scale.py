"""Competition-scale wall times of the commands a team runs all day, with the persistent token
cache cold (emptied first), warm (second run), and off ([metric] cache_mb = 0), side by side.

The workspace (a temporary folder, or --workspace DIR to keep and reuse it):
- --language ko (default): the Kiwi tokenizer on Korean text of competition size. The shared data
  has only the 499 Korean dev and 499 test dialogues, so the 12,457 train rows are made from them
  (seeded): each keeps the speakers and turn count of a real dialogue, with about half its turns
  swapped for turns of other dialogues, and a summary of 1-3 sentences from the dev summaries.
  Dev (hold-out) and test are the real Korean files.
- --language en: the 12,460-row English DialogSum train with [metric] tokenizer = "english";
  dev = the English dev as hold-out, test = the dev dialogues under test_ ids.
Both: 10 model-free candidates (lead and retrieval variants; their outputs are distinct texts, as
models' are) run by `competition run` on 5 folds, 3 ensembles (mbr over 8 members, best,
hill-climb), 20 logged submissions. Each command then runs as a user runs it (`competition ...`
in a fresh process, startup included).

    .venv/bin/python bench/scale.py [--language ko|en] [--rows N] [--workspace DIR] [--repeat 1] [--warm-repeat 3]

--command PATH times another `competition` executable (e.g. one running an older checkout, for
the figures before a change); its "off" config then leaves cache_mb out, for a version without it.
The made-up Korean rows share turns with dev and test: the scores it prints mean nothing, the
seconds do.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITION = [str(Path(sys.executable).with_name("competition"))]  # set by --command
CACHE_FILE = Path("runs") / ".cache" / "tokens.sqlite"
FULL_ROWS = {"ko": 12_457, "en": 12_460}
SUBMISSIONS = 20
# The 11 sources of the cv target: every candidate and the MBR ensemble.
CANDIDATES = {
    "lead1": "turns = 1",
    "lead2": "turns = 2",
    "lead3": "turns = 3",
    "lead1_text": 'turns = 1\nturn_format = "{text}"',
    "lead2_text": 'turns = 2\nturn_format = "{text}"',
    "lead1_named": 'turns = 1\nturn_format = "{named}"',
    "lead2_named": 'turns = 2\nturn_format = "{named}"',
    "retrieval_bi": "ngram_max = 2",
    "retrieval_uni": "ngram_max = 1",
    "retrieval_top3": "ngram_max = 2\ntop_k = 3",
}
NAMED_FORMAT = {"ko": "{speaker}는 {text}", "en": "{speaker} says {text}"}
MBR_MEMBERS = ["lead1", "lead2", "lead1_text", "lead2_text", "lead1_named", "retrieval_bi", "retrieval_uni",
               "retrieval_top3"]


def korean_rows(folder: Path, rows: int, seed: int):
    """(train, dev, test) frames: `rows` Korean train rows made from the real dev and test
    dialogues, the real dev and test."""
    from competition.data.loading import read_split

    dev = read_split(folder / "dev.csv", "dev")
    test = read_split(folder / "test.csv", "test")
    dialogues = [d.split("\n") for d in list(dev["dialogue"]) + list(test["dialogue"])]
    pool = [line.split(":", 1)[1].strip() for turns in dialogues for line in turns if ":" in line]
    sentences = [s.strip() + ("" if s.strip().endswith(".") else ".")
                 for summary in dev["summary"] for s in summary.split(". ") if s.strip()]
    generator = random.Random(seed)
    train = []
    for row in range(rows):
        turns = []
        for line in generator.choice(dialogues):
            speaker, _, text = line.partition(":")
            if text and generator.random() < 0.5:
                text = " " + generator.choice(pool)
            turns.append(f"{speaker}:{text}" if text else line)
        summary = " ".join(generator.sample(sentences, generator.randint(1, 3)))
        train.append({"fname": f"train_{row}", "dialogue": "\n".join(turns), "summary": summary,
                      "topic": generator.choice(list(dev["topic"]))})
    import pandas as pd

    return pd.DataFrame(train), dev, test


def english_rows(folder: Path, rows: int):
    from competition.data.loading import read_split

    train = read_split(folder / "train.jsonl", "train").head(rows)
    dev = read_split(folder / "dev.jsonl", "dev")
    return train, dev, dev.assign(fname="test_" + dev["fname"])[["fname", "dialogue"]]


def config_text(language: str, cache_mb: int | None) -> str:
    tokenizer = "kiwi" if language == "ko" else "english"
    lines = ["[metric]", f'tokenizer = "{tokenizer}"']
    if cache_mb is not None:
        lines.append(f"cache_mb = {cache_mb}")
    lines += ["", "[cv]", "k = 5", ""]
    for name, params in CANDIDATES.items():
        kind = "retrieval" if name.startswith("retrieval") else "lead"
        params = params.replace("{named}", NAMED_FORMAT[language])
        lines += [f"[candidates.{name}]", f'kind = "{kind}"', params, ""]
    lines += ["[ensembles.mbr8]", f"members = {MBR_MEMBERS!r}".replace("'", '"'), 'method = "mbr"', "",
              "[ensembles.best]", 'method = "best"', "",
              "[ensembles.hill]", 'method = "hill-climb"', ""]
    return "\n".join(lines)


def competition(workspace: Path, *args: str, config: str = "competition.toml") -> float:
    """Run `competition ARGS` in the workspace as a user would; its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run([*COMPETITION, *args, "--config", config], cwd=workspace, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"competition {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def build(workspace: Path, language: str, rows: int, data: Path) -> dict:
    """Write the data, configs, folds, runs, ensembles and 20 submissions; seconds per stage."""
    train, dev, test = (korean_rows(data / "dialogsum-ko", rows, seed=7) if language == "ko"
                        else english_rows(data / "dialogsum-en", rows))
    (workspace / "data").mkdir(parents=True)
    train.to_csv(workspace / "data" / "train.csv", index=False)
    dev.to_csv(workspace / "data" / "dev.csv", index=False)
    test[["fname", "dialogue"]].to_csv(workspace / "data" / "test.csv", index=False)
    test[["fname"]].assign(summary="").to_csv(workspace / "data" / "sample_submission.csv", index=False)
    (workspace / "competition.toml").write_text(config_text(language, None), encoding="utf-8")
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    stages = {"folds build": competition(workspace, "folds", "build"),
              "run (10 candidates)": competition(workspace, "run"),
              "ensemble --all": competition(workspace, "ensemble", "--all")}
    sources = list(CANDIDATES) + ["mbr8", "best", "hill"]
    start = time.perf_counter()
    for number in range(SUBMISSIONS):
        source = sources[number % len(sources)]
        competition(workspace, "submit", source, "--allow-duplicate", "--note", f"bench {number}")
    stages[f"{SUBMISSIONS} x submit"] = time.perf_counter() - start
    return stages


COMMANDS = {
    "cv (11 sources)": ["cv", *CANDIDATES, "mbr8"],
    "cv (all 13)": ["cv"],
    "ensemble mbr8": ["ensemble", "mbr8"],
    "ensemble hill": ["ensemble", "hill"],
    "submit mbr8": ["submit", "mbr8", "--allow-duplicate"],
    "history": ["history"],
    "diff 1 2": ["diff", "1", "2"],
    "data check": ["data", "check"],
}


# The targets on 2 cores: warm seconds per command, and cold at most 10% over no cache.
WARM_TARGETS = {"cv (11 sources)": 3.0, "submit mbr8": 2.0, "history": 2.0, "diff 1 2": 2.0, "ensemble mbr8": 15.0}
COLD_SLACK = 1.10


def targets(results: list[tuple[str, float, float, float]]) -> list[str]:
    """One line per target: met or missed, with the figures."""
    lines = []
    for label, off, cold, warm in results:
        if label in WARM_TARGETS:
            limit = WARM_TARGETS[label]
            lines.append(f"warm {label} <= {limit:g} s: {'met' if warm <= limit else 'missed'} ({warm:.2f} s)")
    for label, off, cold, warm in results:
        lines.append(f"cold {label} within 10% of no cache: {'met' if cold <= off * COLD_SLACK else 'missed'} "
                     f"({cold / off - 1:+.0%})")
    return lines


def time_commands(workspace: Path, repeat: int, sizes: list[int],
                  warm_repeat: int = 3) -> list[tuple[str, float, float, float]]:
    """(command, off, cold, warm) seconds: the best of `repeat` runs each (of `warm_repeat` warm
    runs: a second-long run on a shared 2-core machine varies by ~20%); `sizes` gets the cache
    file's bytes after each command's warm runs."""
    cache = workspace / CACHE_FILE
    results = []
    for label, args in COMMANDS.items():
        off = min(competition(workspace, *args, config="nocache.toml") for _ in range(repeat))
        colds = []
        for _ in range(repeat):
            for path in cache.parent.glob(cache.name + "*"):
                path.unlink()
            colds.append(competition(workspace, *args))
        warm = min(competition(workspace, *args) for _ in range(max(repeat, warm_repeat)))
        sizes.append(cache.stat().st_size if cache.exists() else 0)
        results.append((label, off, min(colds), warm))
        print(f"  {label:<18} off {off:7.2f} s  cold {min(colds):7.2f} s  warm {warm:7.2f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--language", choices=("ko", "en"), default="ko")
    parser.add_argument("--rows", type=int, default=0, help="train rows (0 = competition size)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--workspace", default=None,
                        help="build here, or reuse it when it already holds a workspace (default: a temp folder)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest is shown")
    parser.add_argument("--warm-repeat", type=int, default=3, help="warm runs per command; the fastest is shown")
    parser.add_argument("--command", default=None, help="the competition executable to time")
    args = parser.parse_args()
    if args.command:
        COMPETITION[:] = [args.command]
    rows = args.rows or FULL_ROWS[args.language]

    temporary = None if args.workspace else tempfile.mkdtemp(prefix="scale-")
    workspace = Path(args.workspace or temporary).resolve()
    try:
        if not (workspace / "competition.toml").exists():
            print(f"building a {args.language} workspace of {rows:,} train rows in {workspace} ...", flush=True)
            for stage, seconds in build(workspace, args.language, rows, Path(args.data)).items():
                print(f"  {stage:<22} {seconds:8.1f} s", flush=True)
        # Written each time: --command may time a version that has no cache_mb key.
        (workspace / "nocache.toml").write_text(config_text(args.language, None if args.command else 0),
                                                encoding="utf-8")
        print(f"timing ({os.cpu_count()} CPU(s) visible; off = cache_mb 0, cold = empty cache, warm = best of the "
          f"{max(args.repeat, args.warm_repeat)} runs after it):",
              flush=True)
        sizes: list[int] = []
        results = time_commands(workspace, args.repeat, sizes, args.warm_repeat)
        print()
        print(f"| command ({args.language}, {rows:,} train rows) | cache off | cold | warm | warm vs off |")
        print("|---|---:|---:|---:|---:|")
        for label, off, cold, warm in results:
            print(f"| `{label}` | {off:.2f} s | {cold:.2f} s | {warm:.2f} s | {off / warm:.1f}x |")
        print(f"\nlargest token cache file (after one command's runs): {max(sizes) / 2 ** 20:.1f} MB")
        print("\n".join(targets(results)))
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
