"""The parts a model kind's Params are composed of (as TRL's SFTConfig extends TrainingArguments):
the model and where it runs, the prompt, generation, LoRA, the trainer and the launcher. The api
kind's endpoint part is `competition.models.chat.Endpoint`.

A kind's Params inherits the parts it needs, so the TOML table stays flat (`lora_r = 16` directly
under [candidates.NAME]). Every part states its own `check`: the Params' __post_init__ runs each
one once, when the config is loaded (or the Params built in code), and reports every problem at
once; nothing downstream validates again.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution

from ..errors import InvalidValues
from .prompts import (DEFAULT_DIALOGUE_LABEL, DEFAULT_INSTRUCTION, DEFAULT_MARKER, DEFAULT_SUMMARY_LABEL,
                      DEFAULT_SYSTEM, DEFAULT_TOPIC_LABEL)

DEVICES = ("auto", "cuda", "cpu")
LAUNCHERS = ("none", "accelerate")
QUANTIZATIONS = ("4bit", "8bit", "none")
EVAL_METRICS = ("rouge_final", "loss")  # what picks the best checkpoint: validation ROUGE final or loss


def added(default):
    """A key added after results existed: left out of hashes while it holds its default (see
    hashed_settings), so upgrading keeps every earlier training and result current."""
    return field(default=default, metadata={"added": True})


def hashed_settings(params) -> dict:
    """asdict(params) without the `added` keys that still hold their default: what a training (and
    a result) depends on, unchanged for a config that does not use the newer keys."""
    settings = dataclasses.asdict(params)
    for item in dataclasses.fields(params):
        if item.metadata.get("added") and settings[item.name] == item.default:
            del settings[item.name]
    return settings


def _string_constants(source: str, owner: str, dict_name: str | None = None) -> frozenset[str]:
    """String values assigned in class `owner` of a Python source (an enum's members), or the
    string keys of its dict `dict_name`; empty when the class is not there."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == owner:
            found = set()
            for statement in node.body:
                if not isinstance(statement, ast.Assign):
                    continue
                value = statement.value
                named = [t.id for t in statement.targets if isinstance(t, ast.Name)]
                if dict_name is None and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.add(value.value)
                elif dict_name in named and isinstance(value, ast.Dict):
                    found |= {key.value for key in value.keys if isinstance(key, ast.Constant)}
            return frozenset(found)
    return frozenset()


@functools.lru_cache(maxsize=None)
def installed_names(what: str) -> frozenset[str]:
    """The names the installed transformers accepts for `optim` (OptimizerNames) or
    `attn_implementation` ("eager" and the AttentionInterface registry), read from its source
    files: importing transformers' training or modeling code takes seconds, and a config loads on
    every command. Falls back to importing when the source does not have the expected shape."""

    path, owner, dict_name = {"optim": ("transformers/training_args.py", "OptimizerNames", None),
                              "attn_implementation": ("transformers/modeling_utils.py", "AttentionInterface",
                                                      "_global_mapping")}[what]
    try:
        names = _string_constants(distribution("transformers").locate_file(path).read_text(encoding="utf-8"),
                                  owner, dict_name)
    except (PackageNotFoundError, OSError, SyntaxError):
        names = frozenset()
    if not names:
        if what == "optim":
            from transformers.training_args import OptimizerNames

            names = frozenset(member.value for member in OptimizerNames)
        else:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            names = frozenset(ALL_ATTENTION_FUNCTIONS.valid_keys())
    return names | ({"eager"} if what == "attn_implementation" else set())


def installed_choice_problem(key: str, value: str) -> list[str]:
    """[] for "" (the library's default) or a name the installed transformers accepts."""
    if not value or value in installed_names(key):
        return []
    if key == "attn_implementation" and "/" in value:
        return []  # a kernel from the hub (e.g. "kernels-community/flash-attn"), loaded by transformers itself

    names = sorted(installed_names(key))
    close = difflib.get_close_matches(value, names, n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(names)}"
    return [f"{key} = {value!r} is not a name the installed transformers accepts: {fix}"]


def choice_problem(key: str, value, choices: tuple) -> list[str]:
    """[] when `value` is one of `choices`, else the one problem line."""
    return [] if value in choices else [f"{key} = {value!r} should be one of {', '.join(choices)}"]


def at_least(params, keys: tuple[str, ...], floor: float) -> list[str]:
    """A problem line per key of `params` below `floor`."""
    return [f"{key} = {getattr(params, key)} should be {floor} or more" for key in keys if getattr(params, key) < floor]


class Composed:
    """Base of every composed Params: __post_init__ runs each part's `check` (its own problems)
    once and raises them together (errors.InvalidValues, reported per key at config load)."""

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

    model: str = ""  # local model folder (config.json + safetensors), .gguf file, or hub id
    trust_remote_code: bool = False  # run Python shipped with the model: only for models you trust
    attn_implementation: str = added("")  # sdpa | eager | flash_attention_2 | ...; "" = transformers' choice

    def check(self) -> list[str]:
        problems = [] if self.model.strip() else [
            "model = '' should name a local model folder, a .gguf file or a hub id"]
        return problems + installed_choice_problem("attn_implementation", self.attn_implementation)


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
    dialogue_label: str = added(DEFAULT_DIALOGUE_LABEL)  # written before the dialogue (English data: "Dialogue:")
    summary_label: str = added(DEFAULT_SUMMARY_LABEL)  # without a chat template: before each summary ("Summary:")
    topic_label: str = added(DEFAULT_TOPIC_LABEL)  # before the topic with include_topic ("Topic:")

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
class Inference(Composed):
    """How a trained adapter predicts; never part of what the model learns."""

    merge_for_inference: bool = added(False)  # predict with the adapter merged into a dequantised 16-bit base copy


@dataclass
class LoRA(Composed):
    """The LoRA adapter (peft LoraConfig, built by modeling.lora_config)."""

    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    target_modules: str | list[str] = "all-linear"  # "all-linear" or module names like ["q_proj", "v_proj"]
    use_rslora: bool = added(False)  # rank-stabilised LoRA: scale alpha / sqrt(r) instead of alpha / r (peft)
    use_dora: bool = added(False)  # DoRA: LoRA on the direction, a trained magnitude per output (peft; slower)

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
    optim: str = added("")  # paged_adamw_8bit (QLoRA paper), adamw_torch, adafactor, ...; "" = transformers' default
    max_grad_norm: float = added(1.0)  # clip the gradient norm to this (QLoRA paper: 0.3); 0 = no clipping
    weight_decay: float = added(0.0)  # AdamW weight decay
    eval_rows: float = added(0.0)  # validation rows from the training folds: a count or a fraction (< 1); 0 = none
    eval_steps: int = added(0)  # validate (and checkpoint) every N updates; 0 = every save_steps
    eval_generate_rows: int = added(32)  # ROUGE of greedy summaries of up to this many validation rows; 0 = loss only
    eval_metric: str = added("rouge_final")  # the best checkpoint (kept) and early stopping by: rouge_final | loss
    early_stopping_patience: int = added(0)  # stop after this many validations without a better eval_metric; 0 = never

    def picks_by_rouge(self) -> bool:
        """Whether the kept checkpoint is chosen by ROUGE of validation summaries (so by [metric])."""
        return self.eval_rows > 0 and self.eval_generate_rows > 0 and self.eval_metric == "rouge_final"

    def check(self) -> list[str]:
        problems = at_least(self, ("batch_size", "grad_accumulation", "save_steps", "logging_steps"), 1)
        if self.learning_rate <= 0:
            problems.append(f"learning_rate = {self.learning_rate} should be more than 0")
        if self.warmup < 0:
            problems.append(f"warmup = {self.warmup} should be 0 or more")
        for key in ("max_grad_norm", "weight_decay", "eval_rows", "eval_steps", "eval_generate_rows",
                    "early_stopping_patience"):
            if getattr(self, key) < 0:
                problems.append(f"{key} = {getattr(self, key)} should be 0 or more")
        if self.eval_rows >= 1 and self.eval_rows != int(self.eval_rows):
            problems.append(f"eval_rows = {self.eval_rows:g}: give a whole number of rows or a fraction below 1")
        problems += choice_problem("eval_metric", self.eval_metric, EVAL_METRICS)
        if self.early_stopping_patience > 0 and self.eval_rows <= 0:
            problems.append(f"early_stopping_patience = {self.early_stopping_patience} needs validation rows: "
                            "set eval_rows (e.g. 0.05)")
        if self.eval_rows > 0 and self.eval_metric == "rouge_final" and self.eval_generate_rows < 1:
            problems.append("eval_metric = 'rouge_final' needs eval_generate_rows >= 1 (or eval_metric = 'loss')")
        return problems + installed_choice_problem("optim", self.optim)


@dataclass
class Launch(Composed):
    """How one fold's training is started (see competition.models.launch)."""

    launcher: str = "none"  # "accelerate": train under `accelerate launch` (all GPUs of a machine; see docs/guide.md)
    num_processes: int = 1  # launcher = "accelerate": processes (= GPUs) for this fold's training
    accelerate_config: str = ""  # launcher = "accelerate": accelerate config file (FSDP/DeepSpeed); "" = DDP

    def check(self) -> list[str]:
        return choice_problem("launcher", self.launcher, LAUNCHERS) + at_least(self, ("num_processes",), 1)


def field_names(*parts: type) -> frozenset[str]:
    """The names of the fields the given parts declare."""
    return frozenset(f.name for part in parts for f in dataclasses.fields(part))
