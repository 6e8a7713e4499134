"""The prompt kind (no training) on a tiny Qwen3 taught one summary: prompts, few-shot pool, every row predicted."""
from __future__ import annotations

import pandas as pd
import pytest

from competition.candidates.prompt import Params as PromptParams
from competition.errors import ConfigError
from competition.models.prompts import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM, FewShotIndex
from tiny_models import FIXED_SUMMARY, run_through_cli


def test_missing_model_folder_is_a_config_error(tmp_path, korean_rows):
    from competition.candidates.prompt import PromptCandidate

    candidate = PromptCandidate("p", PromptParams(model=str(tmp_path / "no-such-model")), tmp_path / "work")
    with pytest.raises(ConfigError, match="does not exist"):
        candidate.predict(korean_rows.head(1))


@pytest.mark.slow
def test_base_model_gets_a_plain_prompt_and_long_dialogues_are_cut(tiny_summariser_base_lm, korean_rows, tmp_path,
                                                                   capsys):
    """A tokenizer without a chat template: plain-text prompts (few-shot examples as `요약:` lines);
    a dialogue too long for max_length is cut with the configured marker and still summarised (by a
    model trained to answer with FIXED_SUMMARY: its text comes back, not the lead fallback)."""
    from competition.candidates.prompt import PromptCandidate

    params = PromptParams(model=str(tiny_summariser_base_lm), quantization="none", include_topic=True, few_shot=1,
                          max_length=400, max_new_tokens=16, truncation_marker="\n[생략]\n")
    candidate = PromptCandidate("base", params, tmp_path / "work")
    candidate.fit(korean_rows.iloc[[0]], fold=0)  # the one few-shot example
    rows = korean_rows.iloc[[2, 3]].reset_index(drop=True)
    rows.loc[1, "dialogue"] = "#Person1#: 처음입니다.\n" + "#Person2#: 네 알겠어요.\n" * 200 + "#Person1#: 끝입니다."
    model, tokenizer = candidate.load()
    assert not tokenizer.chat_template
    texts, builder = candidate.prompts(rows, tokenizer, params.max_length - params.max_new_tokens)
    example = korean_rows.iloc[0]
    assert texts[0] == (f"{DEFAULT_SYSTEM}\n\n{DEFAULT_INSTRUCTION}\n\n주제: {example['topic']}\n\n대화:\n"
                        f"{example['dialogue']}\n\n요약: {example['summary']}\n\n{DEFAULT_INSTRUCTION}\n\n"
                        f"주제: {rows.loc[0, 'topic']}\n\n대화:\n{rows.loc[0, 'dialogue']}\n\n요약:")
    assert builder.truncated == 1 and "[생략]" in texts[1] and "처음입니다" in texts[1] and "끝입니다" in texts[1]

    summaries = candidate.predict(rows)
    assert summaries == [FIXED_SUMMARY] * 2
    assert candidate.report["empty_to_lead"] == 0 and candidate.report["inputs_truncated"] == 1
    assert "1 dialogues cut in the middle" in capsys.readouterr().err


@pytest.mark.slow
def test_prompt_candidate_predicts_every_row(tiny_summariser_lm, korean_rows, tmp_path):
    """Few-shot prompts through the chat template, batched generation and clean-up: a model trained
    to answer with FIXED_SUMMARY gives that text back for every row, none replaced by the lead."""
    from competition.candidates.prompt import PromptCandidate

    params = PromptParams(model=str(tiny_summariser_lm), quantization="none", few_shot=2, max_new_tokens=16,
                          max_length=400, eval_batch_size=3)
    candidate = PromptCandidate("p", params, tmp_path / "work")
    candidate.fit(korean_rows.head(8), fold=0)
    held_out = korean_rows.tail(4).reset_index(drop=True)
    summaries = candidate.predict(held_out)
    assert summaries == [FIXED_SUMMARY] * 4
    assert candidate.report["rows"] == 4 and candidate.report["empty_to_lead"] == 0


@pytest.mark.slow
def test_few_shot_examples_come_from_the_training_rows_only(tiny_causal_lm, korean_rows, tmp_path):
    """The pool `fit` saves is exactly the training rows; each held-out row's prompt shows few_shot
    of them and nothing of the other held-out rows, although here each held-out row has a
    near-twin among them (its nearest example, had the pool taken in the rows being predicted)."""
    from competition.candidates.prompt import PromptCandidate
    from competition.models.modeling import load_tokenizer

    params = PromptParams(model=str(tiny_causal_lm), quantization="none", few_shot=2, max_length=2000)
    candidate = PromptCandidate("p", params, tmp_path / "work")
    train = korean_rows.head(8)
    candidate.fit(train, fold=0)
    pool = FewShotIndex.load(candidate.fewshot_path).examples
    assert [(e["dialogue"], e["summary"]) for e in pool] == list(zip(train["dialogue"], train["summary"]))

    singles = korean_rows.tail(4)
    twins = singles.assign(fname=singles["fname"] + "_twin", dialogue=singles["dialogue"] + "\n#Person1#: 네, 고마워요.",
                           summary=singles["summary"] + " 둘은 인사합니다.")
    held_out = pd.concat([singles, twins], ignore_index=True)
    texts, _ = candidate.prompts(held_out, load_tokenizer(params), params.max_length)
    for text in texts:
        shown = [summary for summary in train["summary"] if summary in text]
        assert len(shown) == 2, text
        assert not any(summary in text for summary in held_out["summary"]), text


@pytest.mark.slow
def test_prompt_kind_through_competition_run(cli, korean_workspace, tiny_summariser_lm):
    run_through_cli(cli, korean_workspace, "zero_shot", (
        f'kind = "prompt"\nmodel = "{tiny_summariser_lm}"\nquantization = "none"\nfew_shot = 1\n'
        'max_length = 600\nmax_new_tokens = 16\n'), fixed_summary=FIXED_SUMMARY)


@pytest.mark.slow
def test_without_cuda_a_4bit_prompt_model_predicts_through_its_dequantised_weights(tiny_summariser_lm, korean_rows,
                                                                                   tmp_path, capsys):
    """bitsandbytes' 4-bit layers are unusably slow on CPU: the same quantized weights as float
    layers (so the 4-bit model's outputs), said in one line."""
    import bitsandbytes as bnb

    from competition.candidates.prompt import PromptCandidate
    from competition.models.modeling import load_causal_lm

    params = PromptParams(model=str(tiny_summariser_lm), quantization="4bit", max_new_tokens=16, max_length=400)
    candidate = PromptCandidate("p4", params, tmp_path / "work")
    model, _ = candidate.load()
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    quantized = load_causal_lm(params, "cpu")
    layer = "model.layers.0.mlp.down_proj"
    assert torch_equal(quantized.dequantize().get_submodule(layer).weight, model.get_submodule(layer).weight)
    assert "p4: no CUDA here, so the 4bit model predicts through a float32 copy" in capsys.readouterr().err
    assert candidate.predict(korean_rows.tail(2)) == [FIXED_SUMMARY] * 2
    PromptCandidate("p4", params, tmp_path / "fold_1").load()  # the next fold's model: said once per process
    assert "float32 copy" not in capsys.readouterr().err


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a.float(), b.float())
