"""The parts a model kind's Params are composed of (as TRL's SFTConfig extends TrainingArguments):
the model and where it runs, the prompt, generation, LoRA, the trainer and the launcher. The api
kind's endpoint part is `competition.chat.Endpoint`.

A kind's Params inherits the parts it needs, so the TOML table stays flat (`lora_r = 16` directly
under [candidates.NAME]). Every part states its own `check`: the Params' __post_init__ runs each
one once, when the config is loaded (or the Params built in code), and reports every problem at
once; nothing downstream validates again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import InvalidValues
from ..prompts import DEFAULT_INSTRUCTION, DEFAULT_MARKER, DEFAULT_SYSTEM

DEVICES = ("auto", "cuda", "cpu")
LAUNCHERS = ("none", "accelerate")
QUANTIZATIONS = ("4bit", "8bit", "none")


def choice_problem(key: str, value, choices: tuple) -> list[str]:
    """[] when `value` is one of `choices`, else the one problem line."""
    return [] if value in choices else [f"{key} = {value!r} should be one of {', '.join(choices)}"]


def at_least(params, keys: tuple[str, ...], floor: float) -> list[str]:
    """A problem line per key of `params` below `floor`."""
    return [f"{key} = {getattr(params, key)} should be {floor} or more" for key in keys if getattr(params, key) < floor]


class Composed:
    """Base of every composed Params: __post_init__ runs each part's `check` (its own problems)
    once and raises them together (config.InvalidValues, reported per key at config load)."""

    def __post_init__(self) -> None:
        problems = []
        for part in reversed(type(self).__mro__):
            check = part.__dict__.get("check")
            if check is not None:
                problems += check(self)
        if problems:
            raise InvalidValues(problems)


@dataclass
class Model(Composed):
    """The pretrained model a kind starts from (each kind sets its own default)."""

    model: str = ""  # local model folder (config.json + safetensors) or hub id
    trust_remote_code: bool = False  # run Python shipped with the model: only for models you trust

    def check(self) -> list[str]:
        return [] if self.model.strip() else ["model = '' should name a local model folder or a hub id"]


@dataclass
class Placement(Composed):
    """Where a job runs; never part of what a model learns."""

    device: str = "auto"  # auto (CUDA when present) | cuda | cpu
    require_cuda: bool = False  # true: `run`/`make submit` skip this candidate on machines without CUDA
    num_cpus: float = 1.0  # --executor ray: CPUs each fold's task asks for (Ray gives torch that many threads)

    def check(self) -> list[str]:
        problems = choice_problem("device", self.device, DEVICES)
        if self.num_cpus <= 0:
            problems.append(f"num_cpus = {self.num_cpus} should be more than 0")
        return problems


@dataclass
class Prompt(Composed):
    """How a dialogue becomes a causal LM's prompt."""

    system_prompt: str = DEFAULT_SYSTEM  # system message ("" = none)
    instruction: str = DEFAULT_INSTRUCTION  # instruction written before the dialogue
    include_topic: bool = False  # add the row's topic to the prompt (when the data has one)
    truncation_marker: str = DEFAULT_MARKER  # replaces the cut middle of an over-long dialogue
    few_shot: int = 0  # examples per prompt, nearest training dialogues (training folds only)

    def check(self) -> list[str]:
        return [f"few_shot = {self.few_shot} should be 0 or more"] if self.few_shot < 0 else []


@dataclass
class Generation(Composed):
    """Decoding settings: changing them never retrains (training.NOT_TRAINING is built from them)."""

    eval_batch_size: int = 8  # rows per generation batch (sorted by length)
    num_beams: int = 1  # beam search width (1 = greedy)
    max_new_tokens: int = 160  # summary length cap in tokens; a cut last sentence is dropped
    min_new_tokens: int = 0  # shortest summary in tokens (0 = no floor); `competition tune` searches it
    no_repeat_ngram_size: int = 0  # forbid repeated n-grams of this size (0 = off)
    length_penalty: float = 1.0  # beam search: >1 favours longer summaries
    repetition_penalty: float = 1.0  # >1 discourages repeating tokens
    do_sample: bool = False  # sampling instead of greedy/beam (non-deterministic)
    temperature: float = 0.7  # sampling only
    top_p: float = 0.9  # sampling only

    def check(self) -> list[str]:
        return at_least(self, ("num_beams", "max_new_tokens", "eval_batch_size"), 1)


@dataclass
class LoRA(Composed):
    """The LoRA adapter (peft LoraConfig, built by modeling.lora_config)."""

    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    target_modules: str | list[str] = "all-linear"  # "all-linear" or module names like ["q_proj", "v_proj"]

    def check(self) -> list[str]:
        problems = at_least(self, ("lora_r",), 1)
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout = {self.lora_dropout} should be in [0, 1)")
        return problems


@dataclass
class Trainer(Composed):
    """The optimisation (transformers TrainingArguments, built once by training.training_arguments)."""

    gradient_checkpointing: bool = True  # recompute activations: much less memory, ~30% slower
    batch_size: int = 1  # rows per device step
    grad_accumulation: int = 8  # steps per optimizer update (effective batch = batch_size x this)
    learning_rate: float = 2e-4  # peak learning rate
    epochs: float = 1.0  # passes over the training rows
    max_steps: int = -1  # >0: stop after this many optimizer updates (overrides epochs)
    warmup: float = 0.03  # warmup: fraction of the updates (<1) or a number of updates (>=1)
    lr_scheduler: str = "cosine"  # transformers scheduler name
    group_by_length: bool = True  # batch rows of similar length together (less padding)
    save_steps: int = 100  # checkpoint every N updates; a killed run resumes from the last one
    logging_steps: int = 10  # log the loss every N updates

    def check(self) -> list[str]:
        problems = at_least(self, ("batch_size", "grad_accumulation", "save_steps", "logging_steps"), 1)
        if self.learning_rate <= 0:
            problems.append(f"learning_rate = {self.learning_rate} should be more than 0")
        if self.warmup < 0:
            problems.append(f"warmup = {self.warmup} should be 0 or more")
        return problems


@dataclass
class Launch(Composed):
    """How one fold's training is started (see competition.launch)."""

    launcher: str = "none"  # "accelerate": train under `accelerate launch` (all GPUs of a machine; see README)
    num_processes: int = 1  # launcher = "accelerate": processes (= GPUs) for this fold's training
    accelerate_config: str = ""  # launcher = "accelerate": accelerate config file (FSDP/DeepSpeed); "" = DDP

    def check(self) -> list[str]:
        return choice_problem("launcher", self.launcher, LAUNCHERS) + at_least(self, ("num_processes",), 1)


def field_names(*parts: type) -> frozenset[str]:
    """The names of the fields the given parts declare."""
    return frozenset(f.name for part in parts for f in dataclasses.fields(part))
