"""QLoRA on a tiny Qwen3 through the user's path: 4-bit load, LoRA, SFT, save, reload, generate."""
from __future__ import annotations

import json

import pytest

from competition.candidates.base import FoldInputs
from competition.candidates.qlora import Params, QLoRACandidate
from competition.errors import ConfigError
from tiny_models import FIXED_SUMMARY, run_through_cli


def tiny_params(model_dir, **overrides) -> Params:
    settings = dict(model=str(model_dir), max_steps=6, batch_size=4, grad_accumulation=1, learning_rate=1e-2,
                    warmup=0.0, logging_steps=1, save_steps=2, max_length=512, max_new_tokens=12,
                    eval_batch_size=4, gradient_checkpointing=False)
    settings.update(overrides)
    return Params(**settings)


@pytest.mark.slow
def test_qlora_4bit_trains_saves_reloads_and_predicts(tiny_causal_lm, korean_rows, tmp_path, monkeypatch):
    """Trained on one fixed summary, the 4-bit model writes exactly it for unseen dialogues (a long
    one cut to max_length too), none replaced by the lead text; a reload says the same. Predicting
    through the 4-bit layers as on a CUDA machine (without CUDA the default is a dequantised copy)."""
    import bitsandbytes as bnb

    from competition.candidates import qlora
    from competition.models.modeling import completion_loss, load_causal_lm

    monkeypatch.setattr(qlora, "predicts_dequantised", lambda params, device: False)
    params = tiny_params(tiny_causal_lm)
    candidate = QLoRACandidate("tiny", params, tmp_path / "work", seed=0)
    train = korean_rows.head(8).assign(summary=FIXED_SUMMARY)
    candidate.fit(train, fold=0)
    adapter = tmp_path / "work" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and not list(adapter.glob("*.bin"))
    assert candidate.train_report["global_step"] == 6 and candidate.train_report["dropped_too_long"] == 0
    assert not (tmp_path / "work" / "checkpoints").exists()  # only kept while training may resume

    model, tokenizer = candidate.load()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # the real 4-bit path
    pairs, _ = candidate.training_pairs(train, tokenizer)
    prompts, completions = [p["prompt"] for p in pairs], [p["completion"] for p in pairs]
    base = load_causal_lm(params, "cpu")
    assert completion_loss(model, tokenizer, prompts, completions) < completion_loss(base, tokenizer, prompts,
                                                                                    completions) - 0.05

    held_out = korean_rows.tail(4).reset_index(drop=True)
    held_out.loc[3, "dialogue"] = "#Person1#: 처음입니다.\n" + "#Person2#: 네 알겠어요.\n" * 300 + "#Person1#: 끝."
    summaries = candidate.predict(held_out)  # the long dialogue is cut to max_length, not an error
    assert summaries == [FIXED_SUMMARY] * 4
    assert candidate.report["empty_to_lead"] == 0 and candidate.report["inputs_truncated"] == 1

    # A fresh object (a new process) reloads the saved adapter and says the same; fit is not redone.
    again = QLoRACandidate("tiny", params, tmp_path / "work", seed=0)
    again.fit(train, fold=0)
    assert again.train_report == candidate.train_report
    assert again.predict(held_out) == summaries and again.report["empty_to_lead"] == 0


@pytest.mark.slow
def test_prepare_kbit_false_skips_kbit_preparation(tiny_causal_lm):
    """prepare_model_for_kbit_training makes the input embeddings require grad (so checkpointed
    layers get gradients); prepare_kbit = false leaves the quantized model as loaded."""
    import torch

    from competition.models.modeling import load_causal_lm, lora_model

    for prepare in (True, False):
        params = tiny_params(tiny_causal_lm, prepare_kbit=prepare, gradient_checkpointing=True)
        model = lora_model(load_causal_lm(params, "cpu"), params)
        embedded = model.get_input_embeddings()(torch.tensor([[1, 2, 3]]))
        assert embedded.requires_grad is prepare
        assert {n for n, p in model.named_parameters() if p.requires_grad} and all(
            "lora_" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(tiny_causal_lm, korean_rows, tmp_path):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= 2:
                raise KeyboardInterrupt  # what a kill after the step-2 checkpoint looks like

    params = tiny_params(tiny_causal_lm, max_steps=4, batch_size=2)
    first = QLoRACandidate("tiny", params, tmp_path / "work", seed=0, inputs=FoldInputs(trainer_callbacks=(Kill(),)))
    with pytest.raises(KeyboardInterrupt):
        first.fit(korean_rows, fold=0)
    assert (tmp_path / "work" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "work" / "train.json").exists()
    state = json.loads((tmp_path / "work" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    losses_before_kill = [entry["loss"] for entry in state["log_history"] if "loss" in entry]

    second = QLoRACandidate("tiny", params, tmp_path / "work", seed=0)
    second.fit(korean_rows, fold=0)
    report = json.loads((tmp_path / "work" / "train.json").read_text())
    assert report["resumed_from_step"] == 2 and report["global_step"] == 4
    # steps 1-2 come from the checkpoint's history, steps 3-4 were trained after the restart
    assert len(report["losses"]) == 4 and report["losses"][:2] == losses_before_kill


@pytest.mark.slow
def test_too_long_rows_are_dropped_and_counted(tiny_causal_lm, korean_rows, tmp_path, capsys):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    rows = korean_rows.head(4).copy()
    rows.loc[0, "dialogue"] = "#Person1#: 네.\n" * 400
    candidate = QLoRACandidate("tiny", tiny_params(tiny_causal_lm, max_length=300), tmp_path / "work")
    pairs, dropped = candidate.training_pairs(rows, tokenizer)
    assert dropped == 1 and len(pairs) == 3
    assert all(len(tokenizer(p["prompt"] + p["completion"])["input_ids"]) <= 300 for p in pairs)


def test_shipped_model_candidate_examples_parse():
    """The commented examples under `# --- model candidates ---` in competition.toml are valid."""
    import re
    import tomllib
    from pathlib import Path

    from competition.workspace.config import parse_config

    text = (Path(__file__).resolve().parents[2] / "competition.toml").read_text(encoding="utf-8")
    section = text.split("# --- model candidates ---")[1].split("# --- ensembles ---")[0]
    lines = [line[2:] for line in section.splitlines() if line.startswith("# ")]
    body = "\n".join(line for line in lines if line.startswith("[") or re.match(r"^[a-z_0-9]+ = ", line))
    config = parse_config(tomllib.loads(body))
    assert {c.kind for c in config.candidates.values()} == {"qlora", "seq2seq", "api"}
    assert config.candidates["solar_qlora"].params.require_cuda


@pytest.mark.slow
def test_tiny_qlora_through_competition_run(cli, korean_workspace, tiny_causal_lm):
    """A user's path: competition.toml points `model` at a folder; `competition run` fills runs/NAME."""
    runs = run_through_cli(cli, korean_workspace, "tiny", (
        f'kind = "qlora"\nmodel = "{tiny_causal_lm}"\nmax_steps = 6\nbatch_size = 4\ngrad_accumulation = 1\n'
        'learning_rate = 0.01\nlr_scheduler = "constant"\nwarmup = 0.0\n'
        'gradient_checkpointing = false\nmax_length = 512\nmax_new_tokens = 16\n'), fixed_summary=FIXED_SUMMARY)
    assert (runs / "fold_0" / "work" / "adapter" / "adapter_model.safetensors").exists()
    meta = json.loads((runs / "fold_0" / "meta.json").read_text())
    assert meta["kind"] == "qlora" and meta["config"]["params"]["model"] == str(tiny_causal_lm)


@pytest.mark.slow
def test_same_seed_same_adapter_bytes_other_seed_other_adapter(tiny_causal_lm, korean_rows, tmp_path):
    """The LoRA matrices are drawn from the candidate's seed: two trainings of the same config and
    rows save byte-identical adapters, whatever was drawn in between; another seed, another adapter."""
    params = tiny_params(tiny_causal_lm, max_steps=2, save_steps=50)
    train = korean_rows.head(8)
    adapters = []
    for folder, seed in (("first", 7), ("second", 7), ("third", 8)):
        # Other code may have drawn random numbers in between: the candidate must seed by itself.
        import torch

        torch.rand(seed * 3 + len(folder))
        QLoRACandidate("tiny", params, tmp_path / folder, seed=seed).fit(train, fold=0)
        adapters.append((tmp_path / folder / "adapter" / "adapter_model.safetensors").read_bytes())
    assert adapters[0] == adapters[1]
    assert adapters[0] != adapters[2]


def test_a_changed_local_base_model_changes_the_training_fingerprint(tmp_path, korean_rows):
    """Overwriting the base model's weights makes the fold train again: an adapter never runs on a
    base it was not trained on."""
    from competition.models.training import training_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen3"}', encoding="utf-8")
    (model / "model.safetensors").write_bytes(b"weights one")
    params = tiny_params(model)
    before = training_fingerprint(params, korean_rows)
    assert training_fingerprint(params, korean_rows) == before
    (model / "model.safetensors").write_bytes(b"weights two")  # same size, other bytes
    assert training_fingerprint(params, korean_rows) != before


@pytest.mark.slow
def test_optimizer_regularisation_lora_variants_and_padding_free_reach_the_trainer(tiny_causal_lm, korean_rows,
                                                                                   tmp_path):
    """What the trainer really runs with: bitsandbytes' paged 8-bit AdamW, NEFTune on the input
    embeddings, DoRA magnitudes, eager attention, unpadded (one-row) batches with restarting
    positions; the adapter saved says rsLoRA and DoRA."""
    from transformers import TrainerCallback

    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)
            neftune = getattr(model.get_input_embeddings(), "neftune_noise_alpha", 0)
            seen.update(optimizer=inner, args=args, neftune=neftune,
                        parameters=[name for name, _ in model.named_parameters()],
                        attention=model.config._attn_implementation, batch=next(iter(train_dataloader)))

    params = tiny_params(tiny_causal_lm, max_steps=2, save_steps=50, optim="paged_adamw_8bit", max_grad_norm=0.3,
                         weight_decay=0.05, neftune_noise_alpha=5.0, use_dora=True, use_rslora=True,
                         padding_free=True, attn_implementation="eager")
    candidate = QLoRACandidate("tiny", params, tmp_path / "work", seed=0, inputs=FoldInputs(trainer_callbacks=(Spy(),)))
    candidate.fit(korean_rows.head(8), fold=0)

    import bitsandbytes as bnb

    optimizer = seen["optimizer"]
    assert isinstance(optimizer, bnb.optim.optimizer.Optimizer8bit) and optimizer.is_paged
    assert optimizer.args.optim_bits == 8
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.05, 0.0}  # none on norms and biases
    assert seen["args"].max_grad_norm == 0.3
    assert seen["neftune"] == 5.0  # the trainer's hook on the input embeddings, removed after training
    assert any("lora_magnitude_vector" in name for name in seen["parameters"])
    assert seen["attention"] == "eager"
    batch = seen["batch"]
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # 4 rows, one unpadded sequence
    assert (batch["position_ids"][0] == 0).sum() == 4
    saved = json.loads((tmp_path / "work" / "adapter" / "adapter_config.json").read_text())
    assert saved["use_dora"] and saved["use_rslora"]
    assert candidate.train_report["global_step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["packing", "padding_free"])
def test_packing_is_refused_where_packed_rows_would_see_each_other(tiny_opt, korean_rows, tmp_path, setting):
    """OPT's positions come from the attention mask, so rows packed into one sequence attend to
    each other: refused before training, in one line naming both settings."""
    params = tiny_params(tiny_opt, max_steps=1, **{setting: True})
    with pytest.raises(ConfigError) as refused:
        QLoRACandidate("opt", params, tmp_path / "work", seed=0).fit(korean_rows.head(4), fold=0)
    message = str(refused.value)
    assert f"{setting} = true" in message and "packing = false and padding_free = false" in message
    assert "\n" not in message and not (tmp_path / "work" / "adapter").exists()


@pytest.mark.slow
def test_packing_trains_where_the_model_keeps_rows_apart(tiny_causal_lm, korean_rows, tmp_path):
    """Qwen3 keeps packed rows apart from their position ids (transformers' masks, on CPU too):
    packing trains, several rows per packed sequence."""
    from transformers import TrainerCallback

    from competition.models.modeling import load_causal_lm, load_tokenizer, rows_kept_apart

    batches = []

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            batches.append(next(iter(train_dataloader)))

    params = tiny_params(tiny_causal_lm, max_steps=1, save_steps=50, packing=True, batch_size=1)
    assert rows_kept_apart(load_causal_lm(params, "cpu"), load_tokenizer(params))
    candidate = QLoRACandidate("tiny", params, tmp_path / "work", seed=0, inputs=FoldInputs(trainer_callbacks=(Spy(),)))
    candidate.fit(korean_rows.head(8), fold=0)
    assert (batches[0]["position_ids"][0] == 0).sum() > 1  # one sequence, several rows
    assert candidate.trained_weights().exists()


@pytest.mark.slow
def test_merge_for_inference_predicts_the_same_without_4bit_layers_or_retraining(tiny_causal_lm, korean_rows,
                                                                                 tmp_path, monkeypatch, capsys):
    """Trained on one fixed summary (so the outputs are real text), the adapter predicts the same
    through 4-bit layers (as on CUDA) and merged into a dequantised copy of the base; the switch
    keeps the training (it is not a training setting). Without CUDA the merged copy is the
    default, said in one line."""
    import dataclasses

    import bitsandbytes as bnb

    from competition.candidates import qlora

    target = "#Person1#은 우산을 찾습니다."
    rows = korean_rows.assign(summary=target)
    params = tiny_params(tiny_causal_lm, learning_rate=1e-2, lr_scheduler="constant", max_new_tokens=16)
    quantized = QLoRACandidate("tiny", params, tmp_path / "work", seed=0)
    quantized.fit(rows.head(8), fold=0)
    held_out = rows.tail(4).reset_index(drop=True)
    with monkeypatch.context() as cuda_like:
        cuda_like.setattr(qlora, "predicts_dequantised", lambda params, device: False)
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.load()[0].modules())
        through_4bit = quantized.predict(held_out)
    assert through_4bit == [target] * 4

    capsys.readouterr()
    on_cpu = QLoRACandidate("tiny", params, tmp_path / "work", seed=0)  # this machine's default: no CUDA
    on_cpu.fit(rows.head(8), fold=0)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in on_cpu.load()[0].modules())
    assert on_cpu.predict(held_out) == through_4bit
    assert capsys.readouterr().err.count("tiny: no CUDA here, so the 4bit model predicts through a float32 copy") == 1

    merged = QLoRACandidate("tiny", dataclasses.replace(params, merge_for_inference=True), tmp_path / "work", seed=0)
    merged.fit(rows.head(8), fold=0)
    assert merged.train_report == quantized.train_report  # found the finished training: not retrained
    model, _ = merged.load()
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert not any("lora_" in name for name, _ in model.named_parameters())
    assert merged.predict(held_out) == through_4bit


def test_needs_cuda_only_when_declared(tmp_path):
    from competition.candidates.qlora import QLoRACandidate

    assert not QLoRACandidate("q", Params(), tmp_path).needs_cuda()
    assert QLoRACandidate("q", Params(require_cuda=True), tmp_path).needs_cuda()
