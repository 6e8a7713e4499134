"""Summaries per second: batch-1 generation (the naive loop) vs our sorted, left-padded batches.

Run: .venv/bin/python bench/generate.py [--rows 64] [--batch-size 16] [--max-new-tokens 32] [--repeats 3]

Model: the tests' tiny Qwen3 (random weights, hidden 64, 2 layers; --hidden/--layers to grow it)
built in a temp folder and loaded from there like a user's model, on CPU, float32. Rows: the first
--rows Korean dev dialogues from ../shared/data (the 12 fixture dialogues repeated when absent),
rendered with the chat template. Greedy decoding: both ways must give identical outputs (asserted).
Each way runs --repeats times and the fastest counts (the CPU is shared).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: the same builder the tests use


def dialogues(count: int) -> list[str]:
    from competition.data import read_split

    dev = ROOT.parent / "shared" / "data" / "dialogsum-ko" / "dev.csv"
    if dev.exists():
        return read_split(dev, "dev")["dialogue"].tolist()[:count]
    from korean_fixture import DIALOGUES

    return [row[1] for row in DIALOGUES] * (count // len(DIALOGUES) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per way; the fastest counts")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    from competition.candidates.prompt import Params
    from competition.generation import generate
    from competition.prompts import PromptBuilder, PromptTemplate
    from tiny_models import build_tiny_causal_lm

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as folder:
        model_dir = build_tiny_causal_lm(Path(folder))
        if (args.hidden, args.layers) != (64, 2):
            small = Qwen3Config.from_pretrained(model_dir)
            config = Qwen3Config(vocab_size=small.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                                 intermediate_size=2 * args.hidden, num_attention_heads=4, num_key_value_heads=2,
                                 head_dim=args.hidden // 4, tie_word_embeddings=True, eos_token_id=small.eos_token_id,
                                 pad_token_id=small.pad_token_id)
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    params = Params(max_new_tokens=args.max_new_tokens, eval_batch_size=args.batch_size)
    builder = PromptBuilder(tokenizer, PromptTemplate(), max_prompt_tokens=2048)
    texts = [builder.prompt(d) for d in dialogues(args.rows)]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    print(f"{len(texts)} prompts, tokens min/mean/max {min(lengths)}/{sum(lengths) / len(lengths):.0f}/"
          f"{max(lengths)}, max_new_tokens {args.max_new_tokens}, greedy, CPU threads {torch.get_num_threads()}")

    def best_of(**options):
        """(outputs, fastest of --repeats runs): the CPU is shared, so the minimum is the signal."""
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs = generate(model, tokenizer, texts, params, progress=False, **options)
            times.append(time.perf_counter() - start)
        return outputs, min(times)

    generate(model, tokenizer, texts[:2], params, batch_size=2, progress=False)  # warm-up
    naive, naive_s = best_of(batch_size=1, sort_by_length=False)
    unsorted, unsorted_s = best_of(sort_by_length=False)
    ours, ours_s = best_of()
    assert ours == naive, "batched greedy outputs differ from batch-1 outputs"
    assert unsorted == naive, "unsorted batched greedy outputs differ from batch-1 outputs"

    rows = len(texts)
    print(f"{'way':<36} {'seconds':>8} {'summaries/s':>12} {'vs batch-1':>10}")
    for name, seconds in [("batch-1 (naive)", naive_s), (f"batch {args.batch_size}, input order", unsorted_s),
                          (f"batch {args.batch_size}, sorted by length (ours)", ours_s)]:
        print(f"{name:<36} {seconds:8.2f} {rows / seconds:12.1f} {naive_s / seconds:9.1f}x")
    print("outputs identical to batch-1: yes")


if __name__ == "__main__":
    main()
