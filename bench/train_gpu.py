"""QLoRA training throughput on CUDA: real (non-pad) tokens/s and peak VRAM, naive vs ours.

Run (GPU machine): .venv/bin/python bench/train_gpu.py [--model PATH] [--steps 20] [--batch-size 4]

- model: --model PATH (a local causal LM with its tokenizer), else a Qwen3-0.6B-shaped model
  (hidden 1024, 28 layers, random weights) built from config with the tests' tokenizer.
- both ways: the same 4-bit NF4 load + prepare_model_for_kbit_training + LoRA all-linear (r 16),
  gradient checkpointing, bf16, AdamW, --max-length 4096, the same rows (Korean dev dialogues from
  ../shared/data rendered with our prompt; the fixture dialogues repeated when absent).
- naive: rows in random order, every batch padded to max_length.
- ours: length-grouped batches (shuffled mega-batches sorted by length, as group_by_length) padded
  to the longest row of the batch.
Needs CUDA; exits with a message on a machine without it.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


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


def batches(lengths: list[int], batch_size: int, grouped: bool, seed: int) -> list[list[int]]:
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if grouped:
        mega = batch_size * 50
        order = [i for start in range(0, len(order), mega)
                 for i in sorted(order[start:start + mega], key=lambda i: -lengths[i])]
    return [order[start:start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]


def run(way: str, model_dir: Path, rows: list[list[int]], prompt_lengths: list[int], args) -> dict:
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    from competition.candidates.qlora import Params
    from competition.modeling import load_causal_lm, lora_config

    params = replace(Params(model=str(model_dir)), max_length=args.max_length)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = load_causal_lm(params, "cuda")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config(params))
    model.config.use_cache = False
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pad = model.config.pad_token_id or 0
    plan = batches([len(r) for r in rows], args.batch_size, grouped=way == "ours", seed=0)[:args.steps + 2]
    real_tokens, start = 0, None
    for step, batch in enumerate(plan):
        if step == 2:  # two warm-up steps (allocator, kernels) are not timed
            torch.cuda.synchronize()
            start, real_tokens = time.perf_counter(), 0
        width = args.max_length if way == "naive" else max(len(rows[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            tokens = rows[index]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            labels[row, prompt_lengths[index]:len(tokens)] = torch.tensor(tokens[prompt_lengths[index]:])
            mask[row, :len(tokens)] = 1
            real_tokens += len(tokens)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), labels=labels.cuda()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"way": way, "steps": len(plan) - 2, "seconds": seconds, "tokens_per_s": real_tokens / seconds,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    del model, optimizer
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="local causal LM folder (default: Qwen3-0.6B shape, random)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=400)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/train_gpu.py needs CUDA: run it on a GPU machine (no CUDA device here)")
    from transformers import AutoTokenizer

    from competition.prompts import PromptBuilder, PromptTemplate
    from generate import dialogues

    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(args.model) if args.model else build_model_dir(Path(folder))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        builder = PromptBuilder(tokenizer, PromptTemplate(), max_prompt_tokens=args.max_length - 256)
        from competition.data import read_split

        dev = ROOT.parent / "shared" / "data" / "dialogsum-ko" / "dev.csv"
        summaries = (read_split(dev, "dev")["summary"].tolist() if dev.exists() else ["요약입니다."] * args.rows)
        rows, prompt_lengths = [], []
        for index, dialogue in enumerate(dialogues(args.rows)[:args.rows]):
            prompt_ids = tokenizer(builder.prompt(dialogue), add_special_tokens=False)["input_ids"]
            summary_ids = tokenizer(summaries[index % len(summaries)] + tokenizer.eos_token,
                                    add_special_tokens=False)["input_ids"]
            rows.append((prompt_ids + summary_ids)[:args.max_length])
            prompt_lengths.append(len(prompt_ids))
        lengths = sorted(len(r) for r in rows)
        print(f"{torch.cuda.get_device_name()}: {len(rows)} rows, tokens median {lengths[len(lengths) // 2]}, "
              f"max {lengths[-1]}, max_length {args.max_length}, batch {args.batch_size}, {args.steps} steps")
        results = [run(way, model_dir, rows, prompt_lengths, args) for way in ("naive", "ours")]
    naive = results[0]
    print(f"{'way':<8} {'steps':>5} {'seconds':>8} {'real tokens/s':>14} {'peak VRAM GiB':>14} {'speed-up':>9}")
    for result in results:
        print(f"{result['way']:<8} {result['steps']:5d} {result['seconds']:8.1f} {result['tokens_per_s']:14.0f} "
              f"{result['peak_gib']:14.2f} {result['tokens_per_s'] / naive['tokens_per_s']:8.1f}x")


if __name__ == "__main__":
    main()
