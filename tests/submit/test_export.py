"""`competition export`: a trained fold reloads with plain transformers (+ peft) and writes the
same greedy summaries `competition run` wrote; the model card carries config, hashes and scores."""
from __future__ import annotations

import json

import pandas as pd
import pytest


TARGET = "#Person1#은 우산을 찾습니다."
# The tiny T5 learns a newly added tag token (#Person1#) slower than plain text: its target has none.
T5_TARGET = "손님이 우산을 찾습니다."


def fixed_target_workspace(tmp_path, korean_rows, table: str, target: str = TARGET):
    """A workspace whose every summary is `target` (so a tiny model learns to write real text), k = 2."""
    from conftest import write_workspace

    train = korean_rows.assign(summary=target)
    test = korean_rows.tail(2).assign(fname=lambda f: "test_" + f["fname"])
    return write_workspace(tmp_path, train, test, config=f"[cv]\nk = 2\n\n[candidates.tiny]\n{table}\n")


def fold_rows(workspace, fold: int) -> tuple[pd.DataFrame, list[str]]:
    """(fold K's held-out rows in oof.csv order, the summaries `run` wrote for them)."""
    oof = pd.read_csv(workspace / "runs" / "tiny" / f"fold_{fold}" / "oof.csv", keep_default_na=False)
    train = pd.read_csv(workspace / "data" / "train.csv", keep_default_na=False).set_index("fname")
    return train.loc[oof["fname"]].reset_index(), oof["summary"].tolist()


def plain_generate(model, tokenizer, texts: list[str], export, decoder_only: bool) -> list[str]:
    """Greedy summaries with nothing of this project but the output clean-up: the export's
    generation_config.json, one row at a time."""
    import torch
    from transformers import GenerationConfig

    from competition.models.generation import clean_output

    config = GenerationConfig.from_pretrained(export)
    outputs = []
    for text in texts:
        inputs = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            tokens = model.generate(**inputs, generation_config=config)[0]
        new = tokens[inputs["input_ids"].shape[1]:] if decoder_only else tokens
        outputs.append(clean_output(tokenizer.decode(new, skip_special_tokens=True)))
    return outputs


def card_prompt_function(card: str):
    """The build_prompt function a model card's "## Prompt" section gives, defined from its text alone."""
    code = card.split("## Prompt", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the card's own code, as a user would paste it
    return namespace["build_prompt"]


@pytest.mark.slow
@pytest.mark.parametrize("chat", [True, False])
def test_the_cards_prompt_function_builds_the_prompt_run_gives(tiny_causal_lm, tiny_base_lm, korean_rows, chat):
    """The card states the exact prompt: its build_prompt, pasted anywhere, gives PromptBuilder's text
    with the fixed labels of the config (English here), the topic and few-shot examples."""
    from transformers import AutoTokenizer

    from competition.candidates.qlora import Params
    from competition.models.exporting import prompt_function
    from competition.models.prompts import FewShotIndex, PromptBuilder, PromptTemplate

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm if chat else tiny_base_lm)
    for params in (Params(model="m", include_topic=True, few_shot=2),
                   Params(model="m", system_prompt="", instruction="Summarise.", dialogue_label="Dialogue:",
                          summary_label="Summary:", topic_label="Topic:", include_topic=True, few_shot=1),
                   Params(model="m", instruction="")):
        namespace: dict = {}
        exec(prompt_function(params), namespace)  # noqa: S102
        builder = PromptBuilder(tokenizer, PromptTemplate.from_params(params), 4000)
        rows = korean_rows.head(3)
        shots = FewShotIndex.from_rows(korean_rows.tail(5)).nearest(rows["dialogue"].tolist(), params.few_shot)
        for dialogue, topic, examples in zip(rows["dialogue"], rows["topic"], shots):
            assert namespace["build_prompt"](tokenizer, dialogue, topic, examples) == \
                builder.prompt(dialogue, topic, examples)


@pytest.mark.slow
def test_qlora_adapter_and_merged_exports_reproduce_run(cli, tmp_path, korean_rows, tiny_causal_lm):
    import bitsandbytes as bnb
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from competition.candidates.qlora import Params
    from competition.models.prompts import PromptBuilder, PromptTemplate

    workspace = fixed_target_workspace(tmp_path, korean_rows, (
        f'kind = "qlora"\nmodel = "{tiny_causal_lm}"\nmax_steps = 6\nbatch_size = 4\ngrad_accumulation = 1\n'
        'learning_rate = 1e-2\nlr_scheduler = "constant"\nwarmup = 0.0\ngradient_checkpointing = false\n'
        'max_length = 512\nmax_new_tokens = 16\nnum_beams = 1\n'))
    assert cli(["folds", "build"], cwd=workspace).exit_code == 0
    result = cli(["run", "tiny"], cwd=workspace)
    assert result.exit_code == 0, result.output
    rows, written = fold_rows(workspace, 0)
    assert written == [TARGET] * len(rows)  # real text, no lead fallback: a comparison that can fail

    result = cli(["export", "tiny", "--fold", "0"], cwd=workspace)
    assert result.exit_code == 0, result.output
    adapter = workspace / "exports" / "tiny" / "fold_0"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "generation_config.json",
            "README.md"} <= {path.name for path in adapter.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    params = Params(max_length=512, max_new_tokens=16)
    builder = PromptBuilder(tokenizer, PromptTemplate(), params.max_length - params.max_new_tokens)
    build_prompt = card_prompt_function((adapter / "README.md").read_text(encoding="utf-8"))
    prompts = [build_prompt(tokenizer, dialogue) for dialogue in rows["dialogue"]]  # as the card says
    assert prompts == [builder.prompt(dialogue) for dialogue in rows["dialogue"]]
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype="float32", bnb_4bit_quant_storage="float32")
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, quantization_config=four_bit, dtype="float32")
    model = PeftModel.from_pretrained(base, adapter)
    assert plain_generate(model, tokenizer, prompts, adapter, decoder_only=True) == written

    result = cli(["export", "tiny", "--fold", "0", "--merge", "--dtype", "fp32", "--out", tmp_path / "merged"],
                 cwd=workspace)
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any(isinstance(module, bnb.nn.Linear4bit) for module in merged.modules())
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    assert not list((tmp_path / "merged").glob("adapter*"))
    assert plain_generate(merged, tokenizer, prompts, tmp_path / "merged", decoder_only=True) == written

    assert cli(["export", "tiny", "--fold", "0", "--merge", "--out", tmp_path / "bf16"], cwd=workspace).exit_code == 0
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(key).dtype) for key in weights.keys()} == {"torch.bfloat16"}

    card = (adapter / "README.md").read_text(encoding="utf-8")
    board = {entry["name"]: entry for entry in json.loads(cli(["cv", "--json"], cwd=workspace).stdout)}
    meta = json.loads((workspace / "runs" / "tiny" / "fold_0" / "meta.json").read_text())
    assert f"out-of-fold final, all folds: {board['tiny']['oof']['final']:.2f}" in card
    assert f"test-matched final: {board['tiny']['test_matched']['final']:.2f}" in card
    assert f"| data_sha256 | {meta['data_sha256']} |" in card and f"| folds_sha256 | {meta['folds_sha256']} |" in card
    assert '"lora_r": 16' in card and "library_name: peft" in card


@pytest.mark.slow
def test_seq2seq_export_carries_the_tags_and_the_tuned_decoding(cli, tmp_path, korean_rows, tiny_t5):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    workspace = fixed_target_workspace(tmp_path, korean_rows, (
        f'kind = "seq2seq"\nmodel = "{tiny_t5}"\nmax_steps = 10\nbatch_size = 4\nlearning_rate = 1e-2\n'
        'warmup = 0.0\nmax_new_tokens = 16\nnum_beams = 1\nno_repeat_ngram_size = 0\n'), T5_TARGET)
    (workspace / "space.toml").write_text("num_beams = [1, 2]\n", encoding="utf-8")
    assert cli(["folds", "build"], cwd=workspace).exit_code == 0
    assert cli(["run", "tiny"], cwd=workspace).exit_code == 0
    result = cli(["tune", "tiny", "--space", "space.toml", "--trials", "2", "--confirm", "1"], cwd=workspace)
    assert result.exit_code == 0, result.output
    tuned = json.loads((workspace / "runs" / "tiny@tuned" / "meta.json").read_text())["setting"]

    result = cli(["export", "tiny", "--fold", "1", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    export = workspace / "exports" / "tiny" / "fold_1"
    assert report["tuned"] and report["generation"]["num_beams"] == tuned["num_beams"]
    assert GenerationConfig.from_pretrained(export).num_beams == tuned["num_beams"]
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert all(len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1 for tag in ("#Person1#", "#Address#"))

    rows = pd.read_csv(workspace / "runs" / "tiny@tuned" / "fold_1" / "oof.csv", keep_default_na=False)
    train = pd.read_csv(workspace / "data" / "train.csv", keep_default_na=False).set_index("fname")
    model = AutoModelForSeq2SeqLM.from_pretrained(export)
    summaries = plain_generate(model, tokenizer, train.loc[rows["fname"], "dialogue"].tolist(), export,
                               decoder_only=False)
    assert summaries == rows["summary"].tolist() and T5_TARGET in summaries
    assert "the tuned setting of tiny@tuned" in (export / "README.md").read_text(encoding="utf-8")


def test_kinds_without_weights_and_untrained_folds_are_one_line(cli, korean_workspace):
    config = korean_workspace / "competition.toml"
    config.write_text(config.read_text() + '[candidates.lead]\nkind = "lead"\n\n[candidates.t5]\nkind = "seq2seq"\n',
                      encoding="utf-8")
    result = cli(["export", "lead"], cwd=korean_workspace)
    assert result.exit_code == 2 and "kind 'lead', which trains no weights" in result.output
    result = cli(["export", "t5", "--fold", "0"], cwd=korean_workspace)
    assert result.exit_code == 2 and "fold 0 has no finished training" in result.output
    assert "run `competition run t5` first" in result.output
    result = cli(["export", "t5", "--fold", "x"], cwd=korean_workspace)
    assert result.exit_code == 2 and "--fold x: give a fold number or 'refit'" in result.output


def test_an_adapter_card_loads_a_gguf_base_through_gguf_file(tmp_path):
    from competition.models.exporting import base_arguments

    assert base_arguments(str(tmp_path / "models" / "smol.Q4_1.gguf")) == \
        f"{str(tmp_path / 'models')!r}, gguf_file='smol.Q4_1.gguf'"
    assert base_arguments("Qwen/Qwen3-0.6B") == "'Qwen/Qwen3-0.6B'"
