"""Shared trainer logic: a cut train.json means "train again", and the save protocol every rank
follows (all ranks save, so FSDP/ZeRO-3 shards can be gathered; one rank writes; all wait)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from competition.errors import ConfigError
from competition.models import modeling
from competition.models.training import finished_training, save_training


def test_a_cut_or_foreign_train_json_means_not_finished(tmp_path):
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    report = tmp_path / "train.json"
    full = json.dumps({"fingerprint": "abc", "global_step": 6})
    report.write_text(full)
    assert finished_training(tmp_path, weights, "abc") == {"fingerprint": "abc", "global_step": 6}
    assert finished_training(tmp_path, weights, "other params") is None
    for broken in (full[: len(full) // 2], "", "[1, 2]"):  # cut by a kill, an empty file, not an object
        report.write_text(broken)
        assert finished_training(tmp_path, weights, "abc") is None, broken
    report.write_bytes(b"\xff\xfe{")  # not UTF-8
    assert finished_training(tmp_path, weights, "abc") is None
    report.write_text(full)
    weights.unlink()
    assert finished_training(tmp_path, weights, "abc") is None


class FakeTrainer:
    """The parts of a transformers Trainer save_training uses, for one rank of a launch."""

    def __init__(self, events: list, rank: int, fsdp: bool = False, zero_stage: int | None = None):
        self.events, self.rank = events, rank
        self.is_fsdp_enabled, self.is_deepspeed_enabled = fsdp, zero_stage is not None
        plugin = SimpleNamespace(set_state_dict_type=lambda kind: events.append((rank, "state_dict", kind)))
        self.accelerator = SimpleNamespace(
            state=SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage)),
            wait_for_everyone=lambda: events.append((rank, "barrier")))

    def save_model(self, output_dir: str) -> None:
        self.events.append((self.rank, "save_model"))
        if self.rank == 0:  # Trainer.save_model writes on the main process only
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "adapter_model.safetensors").write_bytes(b"weights")
            (Path(output_dir) / "training_args.bin").write_bytes(b"pickle")


def save_on_ranks(tmp_path, monkeypatch, ranks=(0, 1), **trainer_options) -> list:
    events: list = []
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    for rank in ranks:
        monkeypatch.setattr(modeling, "is_main_process", lambda device, rank=rank: rank == 0)
        save_training(FakeTrainer(events, rank, **trainer_options), tmp_path,
                      tmp_path / "adapter" / "adapter_model.safetensors", {"fingerprint": "abc"}, "cuda")
    return events


def test_every_rank_saves_and_waits_but_only_rank_0_writes(tmp_path, monkeypatch):
    events = save_on_ranks(tmp_path, monkeypatch)
    assert events == [(0, "save_model"), (0, "barrier"), (0, "barrier"),
                      (1, "save_model"), (1, "barrier"), (1, "barrier")]
    assert json.loads((tmp_path / "train.json").read_text()) == {"fingerprint": "abc"}
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_model.safetensors"]
    assert not (tmp_path / "checkpoints").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_fsdp_gathers_a_full_state_dict_before_saving(tmp_path, monkeypatch):
    """Under a sharded state dict, Trainer.save_model would write nothing."""
    events = save_on_ranks(tmp_path, monkeypatch, fsdp=True)
    assert events[:2] == [(0, "state_dict", "FULL_STATE_DICT"), (0, "save_model")]
    assert events[4:6] == [(1, "state_dict", "FULL_STATE_DICT"), (1, "save_model")]


def test_zero3_without_gathered_weights_is_refused_on_every_rank_not_marked_finished(tmp_path, monkeypatch):
    """Every rank refuses after the barrier (a rank that went on would wait at the next one until
    killed), the message names the setting for an accelerate config and for a DeepSpeed JSON, and
    DeepSpeed's fallback checkpoint (GBs nothing reads) is removed."""
    def save_deepspeed_checkpoint(self, output_dir):  # ZeRO-3 without stage3_gather_16bit_weights_on_model_save
        self.events.append((self.rank, "save_model"))
        shards = Path(output_dir) / "global_step2"
        shards.mkdir(parents=True, exist_ok=True)
        (shards / f"zero_pp_rank_{self.rank}_mp_rank_00_optim_states.pt").write_bytes(b"shard")
        if self.rank == 0:
            (Path(output_dir) / "latest").write_text("global_step2")
            (Path(output_dir) / "zero_to_fp32.py").write_text("# recovery script")

    monkeypatch.setattr(FakeTrainer, "save_model", save_deepspeed_checkpoint)
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "tokenizer.json").write_text("{}")
    for rank in (1, 0):
        events = []
        monkeypatch.setattr(modeling, "is_main_process", lambda device, rank=rank: rank == 0)
        with pytest.raises(ConfigError) as refused:
            save_training(FakeTrainer(events, rank, zero_stage=3), tmp_path,
                          tmp_path / "adapter" / "adapter_model.safetensors", {"fingerprint": "abc"}, "cuda")
        assert events == [(rank, "save_model"), (rank, "barrier")]  # refused after the barrier, not stuck in it
        message = str(refused.value)
        assert "zero3_save_16bit_model: true" in message and "stage3_gather_16bit_weights_on_model_save" in message
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["tokenizer.json"]
    assert not (tmp_path / "train.json").exists()
    assert (tmp_path / "checkpoints").exists()  # still resumable


@pytest.mark.parametrize("options", [{"fsdp": True}, {"zero_stage": 3}])
def test_merging_lora_under_sharded_training_is_refused(options):
    from competition.models.training import check_mergeable

    with pytest.raises(ConfigError, match="use_lora = true .* FSDP or DeepSpeed ZeRO-3"):
        check_mergeable(FakeTrainer([], 0, **options))
    check_mergeable(FakeTrainer([], 0, zero_stage=2))  # ZeRO-2 keeps full weights on every rank
    check_mergeable(FakeTrainer([], 0))


@pytest.mark.slow
def test_weights_cut_off_from_their_report_are_trained_again(tiny_causal_lm, korean_rows, tmp_path, monkeypatch):
    """Training A finishes; training B (new params) is killed after saving its adapter, before its
    train.json; back on A's params the next run must train again, not take A's train.json as
    vouching for B's adapter."""
    from safetensors.torch import load_file

    from competition.models import training
    from competition.candidates.qlora import Params, QLoRACandidate

    settings = dict(model=str(tiny_causal_lm), max_steps=1, batch_size=4, grad_accumulation=1, warmup=0.0,
                    max_length=512, max_new_tokens=8, gradient_checkpointing=False)
    params_a, params_b = Params(**settings, learning_rate=1e-2), Params(**settings, learning_rate=5e-2)
    adapter = tmp_path / "work" / "adapter" / "adapter_model.safetensors"
    trained = []
    train = QLoRACandidate._train
    monkeypatch.setattr(QLoRACandidate, "_train", lambda self, *args: trained.append(self.params) or train(self, *args))
    rows = korean_rows.head(8)
    QLoRACandidate("tiny", params_a, tmp_path / "work", seed=0).fit(rows, fold=0)
    weights_a = load_file(adapter)

    write_json = training.atomic_write_json

    def killed_before_the_report(path, value):
        if Path(path).name == "train.json":
            raise KeyboardInterrupt
        return write_json(path, value)

    monkeypatch.setattr(training, "atomic_write_json", killed_before_the_report)
    with pytest.raises(KeyboardInterrupt):
        QLoRACandidate("tiny", params_b, tmp_path / "work", seed=0).fit(rows, fold=0)
    monkeypatch.setattr(training, "atomic_write_json", write_json)
    assert any(not load_file(adapter)[key].equal(weights_a[key]) for key in weights_a)  # B's adapter on disk

    again = QLoRACandidate("tiny", params_a, tmp_path / "work", seed=0)
    again.fit(rows, fold=0)
    assert trained == [params_a, params_b, params_a]
    assert json.loads((tmp_path / "work" / "train.json").read_text())["fingerprint"] == again.train_report["fingerprint"]


def test_training_progress_reports_steps_loss_and_time_left_through_the_progress_module(monkeypatch, capsys):
    """Off a terminal: a line per interval with steps done/total, the rate, the time left and the
    last loss; only the main process reports; a resumed training counts from its checkpoint's step."""
    from competition import progress
    from competition.models.training import training_progress_callback

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    callback = training_progress_callback("smol fold 0 training")
    state = SimpleNamespace(is_world_process_zero=True, max_steps=40, global_step=10)
    callback.on_train_begin(None, state, None)
    state.global_step = 11
    callback.on_log(None, state, None, logs={"loss": 1.6234567, "learning_rate": 1e-3})
    callback.on_step_end(None, state, None)
    callback.on_train_end(None, state, None)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("smol fold 0 training: 11/40 steps, ") and lines[0].endswith(" left; loss 1.623")
    assert lines[1].startswith("smol fold 0 training: 11 steps in ")

    other_rank = training_progress_callback()
    state = SimpleNamespace(is_world_process_zero=False, max_steps=40, global_step=0)
    for event in ("on_train_begin", "on_step_end", "on_log", "on_train_end"):
        getattr(other_rank, event)(None, state, None, logs={"loss": 1.0})
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_training_reports_through_progress_not_the_trainers_own_bar_or_dicts(tiny_causal_lm, korean_rows, tmp_path,
                                                                              monkeypatch, capfd):
    from competition import progress
    from competition.candidates.qlora import Params, QLoRACandidate

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    params = Params(model=str(tiny_causal_lm), quantization="none", max_steps=2, batch_size=4, logging_steps=1,
                    save_steps=10, max_length=512, gradient_checkpointing=False)
    candidate = QLoRACandidate("tiny", params, tmp_path / "work")
    with progress.stage("tiny fold 0"):
        candidate.fit(korean_rows.head(8), fold=0)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tiny fold 0 training: ")]
    assert lines[0].startswith("tiny fold 0 training: 1/2 steps, ") and len(lines) == 2
    assert lines[-1].startswith("tiny fold 0 training: 2 steps in ") and "; loss " in lines[-1]
    # transformers' own output: PrinterCallback's dicts (disable_tqdm), ProgressCallback's bar
    assert "{'loss'" not in err and "{'train_runtime'" not in err and "| 2/2 [" not in err
