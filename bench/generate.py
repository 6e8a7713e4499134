"""Summaries per second: batch-1 generation (the naive loop) vs our sorted, left-padded batches;
with --merge, a qlora adapter predicting through 4-bit layers vs merged into a dequantised copy of
the base (merge_for_inference), with the share of rows whose greedy summary differs.

Run: .venv/bin/python bench/generate.py [--rows 64] [--batch-size 16] [--max-new-tokens 32] [--repeats 3]
     .venv/bin/python bench/generate.py --merge [--model PATH]   (CUDA when present, else CPU)

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
from dataclasses import replace
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: the same builder the tests use


def dialogues(count: int) -> list[str]:
    from competition.data.loading import read_split

    dev = ROOT.parent / "shared" / "data" / "dialogsum-ko" / "dev.csv"
    if dev.exists():
        return read_split(dev, "dev")["dialogue"].tolist()[:count]
    from korean_fixture import DIALOGUES

    return [row[1] for row in DIALOGUES] * (count // len(DIALOGUES) + 1)


def merge_comparison(args, model_dir: Path) -> dict:
    """summaries/s of a qlora adapter (random, non-zero LoRA B) predicting through 4-bit layers and
    merged into a dequantised copy of the base, best of --repeats; the share of differing summaries."""
    import pandas as pd
    import torch
    from peft import LoraConfig, get_peft_model

    from competition.candidates import qlora
    from competition.candidates.qlora import Params, QLoRACandidate
    from competition.models.modeling import load_causal_lm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = pd.DataFrame({"fname": [f"row{i}" for i in range(args.rows)], "dialogue": dialogues(args.rows)[:args.rows]})
    params = Params(model=str(model_dir), device=device, max_length=2048, max_new_tokens=args.max_new_tokens,
                    eval_batch_size=args.batch_size)
    summaries, timings = {}, {}
    with tempfile.TemporaryDirectory() as work:
        torch.manual_seed(0)
        adapter = get_peft_model(load_causal_lm(params, device),
                                 LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
        adapter.save_pretrained(str(Path(work) / "adapter"))
        del adapter
        for way, merged in (("4-bit + adapter", False), ("merged (merge_for_inference)", True)):
            candidate = QLoRACandidate("bench", replace(params, merge_for_inference=merged), Path(work))
            # Without CUDA the kind predicts through the merged copy whatever merge_for_inference says
            # (modeling.predicts_dequantised); the 4-bit layers are what is compared here, as on CUDA.
            with mock.patch.object(qlora, "predicts_dequantised", lambda params, device: False):
                candidate.load()  # loading is not timed
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                summaries[way] = candidate.predict(rows)
                times.append(time.perf_counter() - start)
            timings[way] = min(times)
            del candidate
    first, second = summaries.values()
    differing = sum(a != b for a, b in zip(first, second)) / len(first)
    print(f"{'way':<30} {'seconds':>8} {'summaries/s':>12}")
    for way, seconds in timings.items():
        print(f"{way:<30} {seconds:8.2f} {len(rows) / seconds:12.1f}")
    print(f"greedy summaries differing between the two: {100 * differing:.1f}% of {len(rows)} rows ({device})")
    return {"device": device, "seconds": timings, "differing_share": differing, "rows": len(rows)}


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per way; the fastest counts")
    parser.add_argument("--merge", action="store_true",
                        help="compare a qlora adapter through 4-bit layers with merge_for_inference instead")
    parser.add_argument("--model", default="", help="with --merge: a local causal LM folder (default: the tiny Qwen3)")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    from competition.candidates.prompt import Params
    from competition.models.generation import generate
    from competition.models.prompts import PromptBuilder, PromptTemplate
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
        if args.merge:
            return merge_comparison(args, Path(args.model) if args.model else model_dir)
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
