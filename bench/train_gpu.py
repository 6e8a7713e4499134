"""QLoRA training throughput through the qlora kind's own trainer: real (non-pad) tokens/s and peak
VRAM per batching x optimizer.

Run: .venv/bin/python bench/train_gpu.py [--model PATH] [--steps 20] [--batch-size 4] [--max-length 4096]

- batching: padded (random order, every batch padded to max_length), length-grouped
  (group_by_length: mega-batches sorted by length, padded to their longest row), padding-free
  (trl's unpadded batches: one sequence of the rows, positions restarting per row);
- optimizer: paged_adamw_8bit (bitsandbytes; paged on CUDA) and adamw_torch.
Each setting is a QLoRACandidate fit (4-bit NF4, LoRA all-linear r 16, completion-only loss) of
--steps + 2 updates; the first two are not timed. On CUDA (gradient checkpointing, bf16): a
Qwen3-0.6B-shaped random model with the tests' tokenizer unless --model, Korean dev dialogues from
../shared/data (the fixture's when absent). Without CUDA the same table is printed for the tests'
tiny Qwen3 on CPU (peak VRAM "-"), so the script is exercised by tests/test_bench.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

BATCHINGS = {"padded": dict(group_by_length=False), "length-grouped": dict(group_by_length=True),
             "padding-free": dict(group_by_length=True, padding_free=True)}
OPTIMIZERS = ("paged_adamw_8bit", "adamw_torch")
WARMUP_STEPS = 2


def build_model_dir(folder: Path) -> Path:
    """A Qwen3-0.6B-shaped random model with the tests' Korean tokenizer, saved as safetensors."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tiny_models import build_tiny_causal_lm

    build_tiny_causal_lm(folder)  # tokenizer (and a tiny model we overwrite)
    small = Qwen3Config.from_pretrained(folder)
    config = Qwen3Config(vocab_size=small.vocab_size, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                         tie_word_embeddings=True, eos_token_id=small.eos_token_id, pad_token_id=small.pad_token_id)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def training_rows(count: int):
    """Korean dev dialogues with their summaries (the fixture's, repeated, without ../shared/data)."""
    import pandas as pd

    from competition.data.loading import read_split

    dev = ROOT.parent / "shared" / "data" / "dialogsum-ko" / "dev.csv"
    if dev.exists():
        rows = read_split(dev, "dev")[["fname", "dialogue", "summary", "topic"]].head(count)
    else:
        from korean_fixture import DIALOGUES

        rows = pd.DataFrame(DIALOGUES * (count // len(DIALOGUES) + 1), columns=["fname", "dialogue", "summary", "topic"])
        rows = rows.head(count).assign(fname=[f"row{i}" for i in range(count)])
    return rows.reset_index(drop=True)


def measure(model_dir: Path, rows, batching: str, optim: str, args, device: str) -> dict:
    """One setting: a qlora fit of --steps + 2 updates; tokens/s over the timed steps, peak VRAM."""
    import torch
    from transformers import TrainerCallback

    from competition.candidates.base import FoldInputs
    from competition.candidates.qlora import Params, QLoRACandidate

    class Bench(QLoRACandidate):
        def training_args(self, device, validating=False):
            extra = {"include_num_input_tokens_seen": "non_padding"}
            if batching == "padded":
                extra["pad_to_multiple_of"] = self.params.max_length  # every batch as long as max_length
            return dataclasses.replace(super().training_args(device, validating), **extra)

    clock = {}

    class Meter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == WARMUP_STEPS:
                if device == "cuda":
                    torch.cuda.synchronize()
                clock.update(start=time.perf_counter(), tokens=state.num_input_tokens_seen)

        def on_train_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            clock.update(end=time.perf_counter(), total=state.num_input_tokens_seen)

    params = Params(model=str(model_dir), device=device, max_length=args.max_length, max_new_tokens=64,
                    batch_size=args.batch_size, grad_accumulation=1, learning_rate=1e-4, warmup=0.0,
                    max_steps=args.steps + WARMUP_STEPS, save_steps=10 ** 6, logging_steps=10 ** 6,
                    gradient_checkpointing=device == "cuda", optim=optim, **BATCHINGS[batching])
    with tempfile.TemporaryDirectory() as workdir:
        candidate = Bench("bench", params, Path(workdir), seed=0, inputs=FoldInputs(trainer_callbacks=(Meter(),)))
        candidate.fit(rows, fold=0)
    seconds = clock["end"] - clock["start"]
    return {"batching": batching, "optim": optim, "steps": args.steps, "seconds": seconds,
            "rows": candidate.train_report["train_rows"],  # rows longer than max_length are dropped

            "real_tokens": clock["total"] - clock["tokens"], "tokens_per_s": (clock["total"] - clock["tokens"]) / seconds,
            "all_real_tokens": clock["total"],  # warm-up steps included
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None}


def table(results: list[dict]) -> str:
    """The printed table: one line per setting, speed relative to the first."""
    first = results[0]["tokens_per_s"]
    lines = [f"{'batching':<15} {'optimizer':<17} {'steps':>5} {'seconds':>8} {'real tokens/s':>14} "
             f"{'peak VRAM GiB':>14} {'vs first':>9}"]
    for result in results:
        peak = "-" if result["peak_gib"] is None else f"{result['peak_gib']:.2f}"
        lines.append(f"{result['batching']:<15} {result['optim']:<17} {result['steps']:5d} {result['seconds']:8.1f} "
                     f"{result['tokens_per_s']:14.0f} {peak:>14} {result['tokens_per_s'] / first:8.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="local causal LM folder (default: Qwen3-0.6B shape on CUDA, "
                                                    "the tests' tiny Qwen3 on CPU; random weights)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer updates per setting")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=400)
    args = parser.parse_args(argv)

    import torch

    from tiny_models import build_tiny_causal_lm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = training_rows(args.rows)
    with tempfile.TemporaryDirectory() as folder:
        if args.model:
            model_dir = Path(args.model)
        else:
            model_dir = (build_model_dir if device == "cuda" else build_tiny_causal_lm)(Path(folder))
        where = torch.cuda.get_device_name() if device == "cuda" else "CPU (no CUDA: the tests' tiny Qwen3)"
        print(f"{where}: {len(rows)} rows, max_length {args.max_length}, batch {args.batch_size}, "
              f"{args.steps} timed steps after {WARMUP_STEPS}, 4-bit NF4, LoRA r 16")
        results = [measure(model_dir, rows, batching, optim, args, device)
                   for batching in BATCHINGS for optim in OPTIMIZERS]
    print(table(results))
    return results


if __name__ == "__main__":
    main()
