"""A `.gguf` file as `model`: converted once through transformers into a safetensors folder under
runs/.cache/gguf/SHA256, fingerprinted by its sha256, one-line errors for what cannot be read."""
from __future__ import annotations

import shutil
import sys

import pytest

from competition.errors import ConfigError
from competition.models import gguf
from competition.models.fingerprint import model_fingerprint
from tiny_models import FIXED_SUMMARY, run_through_cli


def test_a_file_that_is_not_gguf_or_is_missing_is_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a GGUF")
    with pytest.raises(ConfigError, match=r"is not a GGUF file \(it starts with b'PK\\x03\\x04'") as error:
        gguf.converted_folder(str(fake))
    assert "\n" not in str(error.value) and "point `model` at a .gguf file" in str(error.value)
    with pytest.raises(ConfigError, match="GGUF file .*missing.gguf' does not exist: fix `model`"):
        gguf.converted_folder(str(tmp_path / "missing.gguf"))
    assert not (tmp_path / "runs").exists()  # nothing converted, nothing cached
    assert gguf.is_gguf("models/SmolLM2.Q4_1.GGUF") and not gguf.is_gguf("Qwen/Qwen3-0.6B")


@pytest.mark.slow
def test_converted_once_per_content_and_loads_as_the_same_model(tiny_gguf, tiny_llama, tmp_path, monkeypatch, capsys):
    """The converted folder gives the source model's logits and tokens; a second use, or a copy of
    the file under another name, reuses it (keyed by sha256); a changed file gets its own. Off a
    terminal the conversion says so in one line, without transformers' own tensor bar."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    folder = gguf.converted_folder(str(tiny_gguf))
    said = capsys.readouterr().err
    assert "converting to a safetensors folder" in said and "de-quantizing GGUF tensors" not in said and "\r" not in said
    assert folder == tmp_path / "runs" / ".cache" / "gguf" / gguf.gguf_sha256(tiny_gguf)
    assert (folder / "model.safetensors").exists() and (folder / gguf.DONE_FILE).exists()
    assert "quantization_config" not in (folder / "config.json").read_text()  # an ordinary model folder
    original, converted = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "#Person1#: 안녕하세요. 우산을 찾아요."
    assert tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(tiny_llama)(text)["input_ids"]
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert torch.allclose(original(ids).logits, converted(ids).logits, atol=1e-5)

    def no_second_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf, "convert", no_second_conversion)
    copy = tmp_path / "renamed.gguf"
    shutil.copy(tiny_gguf, copy)
    assert gguf.converted_folder(str(tiny_gguf)) == folder == gguf.converted_folder(str(copy))
    with open(copy, "ab") as file:
        file.write(b"\0" * 32)  # other bytes: another key
    with pytest.raises(AssertionError, match="converted again"):
        gguf.converted_folder(str(copy))


@pytest.mark.slow
def test_provenance_fingerprints_a_gguf_by_its_content(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fingerprint = model_fingerprint(str(tiny_gguf))
    assert fingerprint == {"gguf": tiny_gguf.name, "size": tiny_gguf.stat().st_size,
                           "sha256": gguf.gguf_sha256(tiny_gguf)}
    changed = tmp_path / tiny_gguf.name
    changed.write_bytes(tiny_gguf.read_bytes()[:-1] + b"\1")
    assert model_fingerprint(str(changed))["sha256"] != fingerprint["sha256"]

    calls = []
    monkeypatch.setattr(gguf.hashlib, "sha256", lambda: calls.append(1) or __import__("hashlib").sha256())
    assert model_fingerprint(str(changed))["sha256"] == gguf.gguf_sha256(changed) and calls == []  # remembered


@pytest.mark.slow
def test_gguf_package_missing_and_unsupported_architecture_are_one_line(tiny_gguf, tiny_llama, tmp_path,
                                                                         monkeypatch):
    from tiny_models import write_gguf

    monkeypatch.chdir(tmp_path)
    unknown = write_gguf(tiny_llama, tmp_path / "odd.gguf", architecture="nosucharch")
    with pytest.raises(ConfigError, match=r"cannot dequantise GGUF file .*odd.gguf.*nosucharch") as error:
        gguf.converted_folder(str(unknown))
    assert "\n" not in str(error.value)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails as if it were not installed
    with pytest.raises(ConfigError, match=r"needs the `gguf` package: pip install 'competition\[gguf\]'"):
        gguf.converted_folder(str(tiny_gguf))
    assert not list((tmp_path / "runs" / ".cache" / "gguf").glob("*.partial-*"))  # no half conversion left


@pytest.mark.slow
def test_a_prompt_candidate_runs_on_a_gguf_with_no_other_setting(cli, korean_workspace, tiny_summariser_gguf):
    """The acceptance case: `model = "....gguf"` in competition.toml, nothing else (4-bit by default)."""
    run_through_cli(cli, korean_workspace, "gguf_prompt",
                    f'kind = "prompt"\nmodel = "{tiny_summariser_gguf}"\nmax_new_tokens = 16\nmax_length = 512\n',
                    fixed_summary=FIXED_SUMMARY)
    assert list((korean_workspace / "runs" / ".cache" / "gguf").glob("*/model.safetensors"))


@pytest.mark.slow
def test_a_qlora_candidate_trains_on_a_gguf_in_4bit(tiny_gguf, korean_rows, tmp_path, monkeypatch):
    """4-bit quantisation and LoRA start from the converted float weights (a GGUF's own blocks are
    not trainable), and the training's fingerprint is the file's, not the cache folder's."""
    import bitsandbytes as bnb

    from competition.candidates import qlora
    from competition.candidates.qlora import Params, QLoRACandidate

    trained_in_4bit = []

    def spy_lora_model(model, params):
        trained_in_4bit.append(any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()))
        return original_lora_model(model, params)

    original_lora_model = qlora.lora_model
    monkeypatch.setattr(qlora, "lora_model", spy_lora_model)
    monkeypatch.chdir(tmp_path)
    params = Params(model=str(tiny_gguf), quantization="4bit", max_steps=1, batch_size=2, logging_steps=1,
                    save_steps=10, max_length=512, max_new_tokens=4, gradient_checkpointing=False)
    candidate = QLoRACandidate("tiny", params, tmp_path / "work")
    candidate.fit(korean_rows.head(8), fold=0)
    assert trained_in_4bit == [True]
    assert candidate.train_report["global_step"] == 1 and candidate.trained_weights().exists()
    assert len(candidate.predict(korean_rows.tail(2))) == 2


def test_seq2seq_refuses_a_gguf_model_at_config_load():
    """The conversion reads causal LMs; a seq2seq candidate says so before anything runs."""
    from competition.candidates.seq2seq import Params
    from competition.errors import InvalidValues

    with pytest.raises(InvalidValues, match=r"a \.gguf file is read as a causal LM \(kinds prompt and qlora\)"):
        Params(model="models/t5.gguf")


@pytest.mark.parametrize("raised, refused", [(ValueError("GGUF model with architecture odd is not supported yet."), True),
                                             (NotImplementedError("Dequantization for Q9 is not yet implemented"), True),
                                             (ValueError("tensor row size 7 is not a multiple of 32"), False),
                                             (KeyError("general.name"), False)])
def test_only_transformers_refusals_read_as_an_unsupported_gguf(raised, refused, tmp_path, monkeypatch):
    """transformers' "not supported" and "not implemented" become the one-line refusal; any other
    error (a damaged file, a bug) keeps its traceback instead of blaming the architecture."""
    import transformers

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(ConfigError if refused else type(raised)) as error:
        gguf.converted_folder(str(tmp_path / "m.gguf"))
    assert (error.type is ConfigError) == refused
    assert not list((tmp_path / "runs" / ".cache" / "gguf").glob("*.partial-*"))
