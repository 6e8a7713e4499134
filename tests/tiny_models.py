"""Tiny random-weight models saved to a folder, loaded through the same `from_pretrained` path a
user's model directory takes: a Qwen3-style causal LM with a ChatML template and a T5.

A random tiny model mostly says nothing a summary keeps, and an empty output becomes the lead text
(generation.finish), so a test that wants to see generated text trains on one fixed summary first:
a few steps at a high learning rate and the model writes exactly that text for any dialogue."""
from __future__ import annotations

from pathlib import Path

import pytest

from korean_fixture import DIALOGUES

# Tags found in the data; kept as whole tokens by the trained tokenizer.
TAGS = ["#Person1#", "#Person2#", "#Person3#", "#PhoneNumber#", "#Address#"]

# What the tiny models are trained to say. The T5 target has no #Person1#: the candidate adds the
# tags as new tokens, and their fresh embeddings need more steps than these tests afford.
FIXED_SUMMARY = "#Person1#은 우산을 찾습니다."
FIXED_T5_SUMMARY = "우산을 찾습니다."

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def fixture_text() -> list[str]:
    """Korean dialogues and summaries plus the prompt words, so the vocabulary covers them."""
    from competition.models.prompts import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM

    lines = [DEFAULT_SYSTEM, DEFAULT_INSTRUCTION, "대화 요약 주제 ... (중략) ..."]
    for _, dialogue, summary, topic in DIALOGUES:
        lines += [dialogue, summary, topic]
    return lines * 3


def _train_tokenizer(special: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(fixture_text(), trainer=trainer)
    return tokenizer


def build_tiny_causal_lm(folder: Path) -> Path:
    """A 2-layer Qwen3 (hidden 64) with a ByteLevel BPE tokenizer trained on the fixture text."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    raw = _train_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=700)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_tokens(TAGS)
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_llama(tokenizer_dir: Path, folder: Path) -> Path:
    """A 2-layer Llama (hidden 64) with the tiny Qwen3's tokenizer: an architecture transformers
    reads from GGUF files (write_gguf)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def write_gguf(model_dir: Path, out: Path, architecture: str = "llama") -> Path:
    """A Llama model folder written as a GGUF file (float32 tensors, its byte-level BPE tokenizer
    and chat template), as llama.cpp's converter lays it out: what a `.gguf` `model` is read from.
    `architecture` other than llama writes the same file under another name (an unsupported one)."""
    import json

    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(out), architecture)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [""] * len(tokenizer)
    types = [gguf.TokenType.NORMAL] * len(tokenizer)
    for token, index in spec["model"]["vocab"].items():
        tokens[index] = token
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            # llama.cpp orders each head's rotary dimensions in pairs; transformers reorders them on loading
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            tensor = tensor.reshape(heads, 2, tensor.shape[0] // heads // 2, tensor.shape[1]).transpose(1, 2)
            tensor = tensor.reshape(-1, config.hidden_size)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def build_tiny_opt(folder: Path) -> Path:
    """A 2-layer OPT (hidden 64) with the tiny Qwen3's tokenizer: its learnt positions come from the
    attention mask, so rows packed into one sequence see each other (packing must be refused)."""
    import torch
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    folder = Path(folder)
    build_tiny_causal_lm(folder)  # the tokenizer; the Qwen3 weights are replaced below
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                       num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=2048,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.pad_token_id)
    for stale in folder.glob("*.safetensors"):
        stale.unlink()
    (folder / "generation_config.json").unlink(missing_ok=True)
    OPTForCausalLM(config).save_pretrained(folder)
    return folder


def build_tiny_t5(folder: Path) -> Path:
    """A 2-layer T5 (d_model 64) with a BPE tokenizer whose ids follow T5's: pad 0, eos 1, unk 2."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    raw = _train_tokenizer(["<pad>", "</s>", "<unk>"], vocab_size=700)
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_ff=128, d_kv=16, num_layers=2,
                      num_decoder_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1, tie_word_embeddings=False)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """Folder of the tiny Qwen3 (built once per test session); import this fixture into a test module."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_base_lm(tiny_causal_lm, tmp_path_factory) -> Path:
    """The tiny Qwen3 without a chat template, like a base (non-chat) model: prompts are plain text."""
    return without_chat_template(tiny_causal_lm, tmp_path_factory.mktemp("tiny-qwen3-base"))


def without_chat_template(model_dir: Path, folder: Path) -> Path:
    """A copy of `model_dir` in `folder` whose tokenizer has no chat template (a base model's)."""
    import shutil

    shutil.copytree(model_dir, folder, dirs_exist_ok=True)
    (folder / "chat_template.jinja").unlink()
    return folder


def train_to_say(model_dir: Path, folder: Path, summary: str = FIXED_SUMMARY) -> Path:
    """`model_dir` fine-tuned (LoRA, merged) until it answers every prompt with `summary`, saved to
    `folder` with its tokenizer: a model for the kinds that do not train (prompt)."""
    import pandas as pd
    import torch
    from transformers import AutoTokenizer

    from competition.candidates.qlora import Params, QLoRACandidate
    from competition.models.modeling import merged_causal_lm

    folder = Path(folder)
    params = Params(model=str(model_dir), quantization="none", max_steps=6, batch_size=4, grad_accumulation=1,
                    learning_rate=1e-2, lr_scheduler="constant", warmup=0.0, save_steps=50, max_length=512,
                    gradient_checkpointing=False)
    rows = pd.DataFrame(DIALOGUES, columns=["fname", "dialogue", "summary", "topic"]).assign(summary=summary)
    trainer = QLoRACandidate("says", params, folder / "training", seed=0)
    trainer.fit(rows, fold=None)
    merged_causal_lm(params, "cpu", trainer.adapter_dir(), dtype=torch.float32).save_pretrained(folder / "model")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder / "model")
    return folder / "model"


@pytest.fixture(scope="session")
def tiny_summariser_lm(tiny_causal_lm, tmp_path_factory) -> Path:
    """The tiny Qwen3 trained to answer every prompt (chat or plain, few-shot or not) with FIXED_SUMMARY."""
    return train_to_say(tiny_causal_lm, tmp_path_factory.mktemp("tiny-qwen3-says"))


@pytest.fixture(scope="session")
def tiny_summariser_base_lm(tiny_summariser_lm, tmp_path_factory) -> Path:
    """tiny_summariser_lm without its chat template (plain-text prompts, like a base model)."""
    return without_chat_template(tiny_summariser_lm, tmp_path_factory.mktemp("tiny-qwen3-says-base"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_causal_lm, tmp_path_factory) -> Path:
    return build_tiny_llama(tiny_causal_lm, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama as a GGUF file (float32 tensors)."""
    return write_gguf(tiny_llama, tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.F32.gguf")


@pytest.fixture(scope="session")
def tiny_summariser_gguf(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama trained to answer every prompt with FIXED_SUMMARY, as a GGUF file."""
    folder = tmp_path_factory.mktemp("tiny-llama-says")
    return write_gguf(train_to_say(tiny_llama, folder), folder / "says.gguf")


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory) -> Path:
    return build_tiny_opt(tmp_path_factory.mktemp("tiny-opt"))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


def run_through_cli(cli, workspace: Path, name: str, table: str, fixed_summary: str | None = None) -> Path:
    """Add [candidates.NAME] (TOML body `table`) to a workspace with k = 2, build folds, run
    `competition run NAME`, check runs/NAME has a summary for every row that no fold replaced by
    the lead text (an empty output), and that `competition cv` ranks it as complete with a numeric
    OOF final.

    With `fixed_summary`, every training (and dev) summary is first set to that text, and every OOF
    and test summary must then be exactly it (a candidate trained enough writes it; a prompt model
    must have been trained to say it), with an OOF final of 100."""
    import json
    import math

    import pandas as pd

    data = workspace / "data"
    if fixed_summary is not None:
        for split in ("train", "dev"):
            if (data / f"{split}.csv").exists():
                rows = pd.read_csv(data / f"{split}.csv", keep_default_na=False)
                rows.assign(summary=fixed_summary).to_csv(data / f"{split}.csv", index=False)
    config = (workspace / "competition.toml").read_text(encoding="utf-8")
    config += f"[cv]\nk = 2\n\n[candidates.{name}]\n{table}\n"
    (workspace / "competition.toml").write_text(config, encoding="utf-8")
    assert cli(["folds", "build"], cwd=workspace).exit_code == 0
    result = cli(["run", name], cwd=workspace)
    assert result.exit_code == 0, result.output
    runs = workspace / "runs" / name
    for fold in (0, 1):
        reports = json.loads((runs / f"fold_{fold}" / "meta.json").read_text(encoding="utf-8"))["reports"]
        # Every model kind reports how many outputs were empty and became the lead text.
        assert {"oof", "test"} <= set(reports), reports
        assert all(report["empty_to_lead"] == 0 for report in reports.values()), (fold, reports)
    oof = pd.concat([pd.read_csv(runs / f"fold_{k}" / "oof.csv", keep_default_na=False) for k in (0, 1)])
    train = pd.read_csv(data / "train.csv")
    assert sorted(oof["fname"]) == sorted(train["fname"]) and (oof["summary"].str.strip() != "").all()
    test = pd.read_csv(runs / "test.csv", keep_default_na=False)
    expected = pd.read_csv(data / "test.csv")["fname"].tolist()
    assert test["fname"].tolist() == expected and (test["summary"].str.strip() != "").all()
    if fixed_summary is not None:
        assert oof["summary"].tolist() == [fixed_summary] * len(oof)
        assert test["summary"].tolist() == [fixed_summary] * len(test)
    result = cli(["cv", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    entry = {e["name"]: e for e in json.loads(result.stdout)}[name]
    assert entry["complete"] and entry["folds_done"] == entry["k"] == 2, entry
    final = entry["oof"]["final"]
    assert isinstance(final, float) and math.isfinite(final) and 0 <= final <= 100
    if fixed_summary is not None:
        assert final == pytest.approx(100, abs=1e-3)
    return runs
