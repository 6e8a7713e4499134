"""The benchmark scripts run on CPU (the tests' tiny models), so they cannot rot between GPU runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_gpu_prints_the_batching_by_optimizer_table_on_cpu(capsys):
    """Six settings through the qlora kind's trainer; 6 rows in batches of 2 for 3 updates (2 warm-up,
    1 timed) is one epoch, so every setting saw the same real tokens: padding is not counted,
    padding-free loses none."""
    results = bench_module("train_gpu").main(["--steps", "1", "--rows", "6", "--batch-size", "2",
                                               "--max-length", "1024"])
    assert {r["rows"] for r in results} == {6}  # none dropped as too long
    assert [(r["batching"], r["optim"]) for r in results] == [
        (batching, optim) for batching in ("padded", "length-grouped", "padding-free")
        for optim in ("paged_adamw_8bit", "adamw_torch")]
    assert all(r["tokens_per_s"] > 0 and r["peak_gib"] is None for r in results)
    assert len({r["all_real_tokens"] for r in results}) == 1 and results[0]["all_real_tokens"] > 6 * 50
    printed = capsys.readouterr().out.splitlines()  # the trainer's own log lines come in between
    assert printed[0].startswith("CPU (no CUDA: the tests' tiny Qwen3): 6 rows")
    header = next(i for i, line in enumerate(printed) if line.startswith("batching"))
    assert printed[header].split()[:3] == ["batching", "optimizer", "steps"] and len(printed) == header + 7
    assert printed[header + 1].split()[:2] == ["padded", "paged_adamw_8bit"]
    assert printed[header + 1].split()[-2:] == ["-", "1.00x"]


@pytest.mark.slow
def test_generate_compares_4bit_and_merged_prediction_on_cpu(capsys):
    """A random, non-zero adapter on the tiny Qwen3, both ways timed: through 4-bit layers (kept on
    CPU too, where the kind itself would predict merged) and merged into the dequantised base; no
    greedy summary differs."""
    result = bench_module("generate").main(["--merge", "--rows", "6", "--max-new-tokens", "8", "--repeats", "1",
                                            "--batch-size", "3"])
    assert result["device"] == "cpu" and result["rows"] == 6 and result["differing_share"] == 0
    assert set(result["seconds"]) == {"4-bit + adapter", "merged (merge_for_inference)"}
    printed = capsys.readouterr().out
    assert "greedy summaries differing between the two: 0.0% of 6 rows (cpu)" in printed and "summaries/s" in printed


@pytest.mark.slow
def test_real_model_bench_runs_its_sources_on_a_tiny_gguf(tiny_gguf, tmp_path, capsys):
    """bench/real_model.py with the tests' tiny GGUF instead of SmolLM2 (so no download): the
    workspace, `competition run` per source in its own process, the scores and timings table."""
    results = bench_module("real_model").main(["--gguf", str(tiny_gguf), "--rows", "8", "--steps", "1", "--dev", "2",
                                               "--test", "1", "--sources", "lead,qlora_none",
                                               "--workspace", str(tmp_path / "ws")])
    assert [r["name"] for r in results] == ["lead", "qlora_none"]
    lead, tuned = results
    assert lead["oof_rows"] == tuned["oof_rows"] > 0 and lead["dev"] is not None and lead["oof"] > 0
    assert tuned["train_tokens_per_s"] > 0 and tuned["peak_rss_mib"] > 0 and tuned["rows_per_s"] > 0
    assert "train_tokens_per_s" not in lead
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("tiny-llama.F32.gguf on English DialogSum, CPU")
    assert printed[1].startswith("| source | OOF | dev | dev-novel |") and len(printed) == 5
    assert printed[3].startswith("| lead | ") and printed[4].startswith("| qlora_none | ")
