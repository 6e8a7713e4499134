"""Training through a transformers Trainer, shared by the kinds that fine-tune (qlora, seq2seq).

What a training depends on (its fingerprint), resuming from checkpoints after a kill, and saving
the result under a single process, DDP, FSDP or DeepSpeed: every rank takes part in the save
(sharded weights must be gathered), only the main process writes, and `train.json` is deleted when
a training starts and written last, atomically, so it marks a finished training.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from ..data.loading import rows_sha256
from ..data.predictions import read_meta
from ..errors import ConfigError
from ..files import atomic_write_json
from ..hashing import config_hash
from ..progress import progress
from .fingerprint import params_models
from .modeling import is_main_process, launched_distributed, world_size
from .params import Generation, Inference, Placement, field_names, hashed_settings
from .validation import validation_arguments

# Params that do not change training (generation, inference, where a job runs): editing them keeps the
# trained weights.
NOT_TRAINING = field_names(Generation, Placement, Inference)
REPORT_FILE = "train.json"


def training_fingerprint(params, train_rows: pd.DataFrame, extra: dict | None = None) -> str:
    """What a trained adapter or model depends on: training params (not generation ones), the
    local base model's files (fingerprint.params_models), the rows, and `extra` (the candidate's
    training_inputs)."""

    training = {k: v for k, v in hashed_settings(params).items() if k not in NOT_TRAINING}
    return config_hash({"params": training, "models": params_models(params), "rows": rows_sha256(train_rows),
                        **({"extra": extra} if extra else {})})


def finished_training(workdir: Path, weights: Path, fingerprint: str) -> dict | None:
    """workdir's train.json when a training with `fingerprint` finished and saved `weights`, else
    None (train again). An unreadable train.json (cut by a kill or a full disk) counts as unfinished."""

    done = read_meta(workdir / REPORT_FILE) if weights.exists() else None
    if isinstance(done, dict) and done.get("fingerprint") == fingerprint:
        return done
    return None


def finished_fit(candidate, train_rows: pd.DataFrame) -> tuple[str, dict | None]:
    """(fingerprint, train.json) for a candidate that trains (it names its weights file with
    `trained_weights()`) on `train_rows`: train.json is None when it has to train again."""
    fingerprint = training_fingerprint(candidate.params, train_rows, candidate.training_inputs())
    return fingerprint, finished_training(candidate.workdir, candidate.trained_weights(), fingerprint)


def training_arguments(args_class: type, params, workdir: Path, seed: int, device: str, validating: bool = False,
                       **kind_arguments):
    """The one builder of a kind's TrainingArguments (trl's SFTConfig, Seq2SeqTrainingArguments, ...):
    the Trainer part's settings, checkpoints under workdir/checkpoints (the last two kept for
    resuming, and the best one when `validating`), bf16 on CUDA, plus the kind's own `kind_arguments`."""
    common = dict(
        output_dir=str(Path(workdir) / "checkpoints"), per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accumulation, learning_rate=params.learning_rate,
        num_train_epochs=params.epochs, max_steps=params.max_steps, warmup_steps=params.warmup,
        lr_scheduler_type=params.lr_scheduler, logging_steps=params.logging_steps, save_steps=params.save_steps,
        save_total_limit=2, seed=seed, data_seed=seed, bf16=device == "cuda", use_cpu=device == "cpu",
        activation_checkpointing=params.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        max_grad_norm=params.max_grad_norm, weight_decay=params.weight_decay,
        report_to="none", dataloader_pin_memory=device == "cuda",
        disable_tqdm=True)  # show_training_progress reports instead, as generation does
    if params.optim:  # "" keeps transformers' own default
        common["optim"] = params.optim
    return args_class(**{**common, **validation_arguments(params, validating), **kind_arguments})


def check_not_a_stray_rank() -> None:
    """Refuse to train when WORLD_SIZE > 1 was left in the environment (by a scheduler) without a
    launcher: the trainer would start a process group and wait forever for the other ranks."""

    if world_size() > 1 and not launched_distributed():
        raise ConfigError(f"WORLD_SIZE={world_size()} is set but this process was not started by "
                          "`accelerate launch` or torchrun, so training would wait for ranks that never start: "
                          "unset WORLD_SIZE, or train on several GPUs with launcher = \"accelerate\" in competition.toml")


def checkpoint_to_resume(args, fingerprint: str) -> str | None:
    """The last checkpoint under args.output_dir (workdir/checkpoints), deleting checkpoints of other
    params or rows first, and the previous training's train.json: from here on the weights beside
    it may be overwritten, and a kill before the new train.json must not leave the old one vouching
    for them.

    Under DDP the main process cleans up and stamps the folder while the other ranks wait, so
    every rank resumes from the same checkpoint.
    """
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = Path(args.output_dir)
    stamp = checkpoints / "fingerprint.txt"
    with args.main_process_first(local=False, desc="checkpoint clean-up"):
        if args.process_index == 0:
            (checkpoints.parent / REPORT_FILE).unlink(missing_ok=True)
            if checkpoints.exists() and (not stamp.exists() or stamp.read_text().strip() != fingerprint):
                shutil.rmtree(checkpoints)  # resuming them would mix two trainings
            checkpoints.mkdir(parents=True, exist_ok=True)
            stamp.write_text(fingerprint)
    return get_last_checkpoint(str(checkpoints))


def trainer_state_step(checkpoint: str) -> int:
    """The global step a checkpoint folder was saved at (0 when it has no trainer_state.json)."""
    state = Path(checkpoint) / "trainer_state.json"
    return json.loads(state.read_text())["global_step"] if state.exists() else 0


def sharded(trainer) -> bool:
    """True when no rank holds the full weights (FSDP, DeepSpeed ZeRO-3): they exist only gathered."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    if getattr(trainer, "is_deepspeed_enabled", False):
        return trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def save_training(trainer, workdir: Path, weights: Path, report: dict, device: str,
                  merge_lora: bool = False) -> None:
    """Save the trained weights into `weights`' folder, then train.json, then drop checkpoints/
    (weights + optimizer state, GBs for big models, that only served resuming).

    Call it on every rank: Trainer.save_model gathers FSDP/ZeRO-3 shards (a collective) and writes
    on the main process only (safetensors weights, or a LoRA adapter for a peft model, and the
    tokenizer). merge_lora writes the model with its LoRA merged instead; that needs the full
    weights on the main process, so sharded training is refused before it starts (check_mergeable).
    After a barrier every rank checks the weights are there, so a refusal stops all of them rather
    than leave the others waiting at the next barrier.
    """

    folder = weights.parent
    main = is_main_process(device)
    if merge_lora:
        check_mergeable(trainer)
        if main:  # DDP and single processes hold the full weights on every rank
            trainer.model.merge_and_unload().save_pretrained(str(folder))
            trainer.processing_class.save_pretrained(str(folder))
    else:
        if getattr(trainer, "is_fsdp_enabled", False):
            # A sharded state dict makes save_model write nothing; gather the full one.
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(folder))
    trainer.accelerator.wait_for_everyone()  # the main process has written the weights
    if not weights.exists():  # train.json would mark a training finished that left no weights
        deepspeed = getattr(trainer, "is_deepspeed_enabled", False)
        if main and deepspeed:
            remove_deepspeed_checkpoint(folder)
        fix = ("set `zero3_save_16bit_model: true` in the accelerate config file (in a DeepSpeed JSON: "
               "\"stage3_gather_16bit_weights_on_model_save\": true under zero_optimization)"
               if deepspeed else "check the accelerate config file (accelerate_config) saves full weights")
        raise ConfigError(f"training saved no {weights.name} in {folder}: {fix}, then run again "
                          "(checkpoints/ is kept, so training resumes)")
    if main:
        (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle nothing reads: meta.json has the config

        atomic_write_json(workdir / REPORT_FILE, report)
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def remove_deepspeed_checkpoint(folder: Path) -> None:
    """Delete what Trainer.save_model writes instead of weights under ZeRO-3 without gathering
    (DeepSpeed's save_checkpoint: global_step*/ with every rank's shards, `latest`, zero_to_fp32.py):
    GBs that nothing here reads, since the refused training resumes from checkpoints/."""
    for leftover in folder.glob("global_step*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    for name in ("latest", "zero_to_fp32.py"):
        (folder / name).unlink(missing_ok=True)


def check_mergeable(trainer) -> None:
    """Refuse merging LoRA into weights no rank holds in full (FSDP, ZeRO-3)."""
    if sharded(trainer):
        raise ConfigError("use_lora = true (merged when saved) cannot be trained under FSDP or DeepSpeed ZeRO-3, "
                          "which shard the weights: use DDP (accelerate_config = \"\"), ZeRO-1/2, or use_lora = false")


def training_progress_callback(desc: str = "training"):
    """A TrainerCallback that reports steps done/total, the time left and the last logged loss
    through competition.progress (a bar on a terminal, a line about every 30 s in a log), on the
    main process only."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                # a resumed training starts at its checkpoint's step; the rate counts this run's steps only
                self.bar = progress(desc=desc, total=state.max_steps, unit="steps", initial=state.global_step)
                self.step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.step)
                self.step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix_str(f"loss {logs['loss']:.4g}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainingProgress()


def show_training_progress(trainer, desc: str = "training") -> None:
    """Replace the trainer's own progress output (a tqdm bar whose carriage returns fill a log, or
    with disable_tqdm a printed dict per log) with training_progress_callback."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(training_progress_callback(desc))


def trainer_report(trainer, fingerprint: str, resumed_from: int, **counts) -> dict:
    """train.json: the fingerprint, rows used, processes (GPUs under DDP), where training resumed,
    steps and logged losses."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"fingerprint": fingerprint, **counts, "processes": trainer.args.world_size,
            "resumed_from_step": resumed_from, "global_step": trainer.state.global_step, "losses": losses}
