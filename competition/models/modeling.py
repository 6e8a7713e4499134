"""Pure builders from a kind's Params to library objects (quantization, LoRA, device), and loaders
that turn a missing or unreadable model into one user-facing line."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ConfigError
from ..progress import quiet_library_bars, say_once
from .gguf import converted_folder, is_gguf


def resolve_device(params) -> str:
    """"cuda" or "cpu": `device = "auto"` picks CUDA when there is one (the value itself was
    checked when the config was loaded; whether this machine has CUDA is checked here)."""
    import torch

    if params.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if params.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = \"cuda\" but this machine has no CUDA: use device = \"auto\" or a GPU machine")
    return params.device


def compute_dtype(device: str):
    """bf16 on CUDA (what QLoRA trains in), float32 on CPU (bf16 matmuls are slow or missing there)."""
    import torch

    return torch.bfloat16 if device == "cuda" else torch.float32


def world_size() -> int:
    """WORLD_SIZE from the environment (1 when unset or not a number)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_distributed() -> bool:
    """True when a launcher started this process as one rank of several: WORLD_SIZE > 1 and
    LOCAL_RANK set, and torchrun (which `accelerate launch` runs for several processes, DDP, FSDP
    and DeepSpeed alike) left its run id, or a process group already runs. A WORLD_SIZE that a
    scheduler left in the environment does not count: accelerate would start a process group and
    wait for ranks that never come. Nor does ACCELERATE_MIXED_PRECISION: `accelerate launch` sets
    it for a single process too, whose environment is otherwise a copy of the caller's."""
    if world_size() <= 1 or "LOCAL_RANK" not in os.environ:
        return False
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return True
    import torch.distributed

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def device_map(device: str) -> dict:
    """Where the whole model goes: this process's own GPU (LOCAL_RANK) under a distributed launch,
    GPU 0 in a single process, or the CPU."""
    if device != "cuda":
        return {"": "cpu"}
    if launched_distributed():
        return {"": int(os.environ["LOCAL_RANK"])}
    return {"": 0}


def is_main_process(device: str) -> bool:
    """True in a single process and on rank 0 of a distributed launch: the one process that writes.

    `device` picks the backend accelerate starts when no trainer has yet (gloo on CPU, NCCL on CUDA).
    """
    if not launched_distributed():
        return True
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu").is_main_process


def bnb_config(params, device: str = "cpu"):
    """BitsAndBytesConfig for `quantization`: NF4 with double quantization, 8-bit, or None."""
    if params.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if params.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype(device), bnb_4bit_quant_storage=compute_dtype(device))


def lora_config(params, task_type: str = "CAUSAL_LM"):
    """peft LoraConfig from the LoRA part: rank, alpha, dropout, targets ("all-linear" or a list),
    rsLoRA and DoRA."""
    from peft import LoraConfig

    return LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=params.target_modules, use_rslora=params.use_rslora, use_dora=params.use_dora,
                      bias="none", task_type=task_type)


def lora_model(model, params):
    """`model` with LoRA attached; a quantized one first goes through peft's
    prepare_model_for_kbit_training (fp32 norms, input grads) unless `prepare_kbit = false`."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if params.quantization != "none" and params.prepare_kbit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=params.gradient_checkpointing)
    return get_peft_model(model, lora_config(params))


def model_source(params) -> str:
    """A local folder (absolute, or relative to the current workspace) or a hub id as given; a
    .gguf file's safetensors folder (converted on first use, see competition.models.gguf)."""
    if is_gguf(params.model):
        return str(converted_folder(params.model))
    path = Path(params.model).expanduser()
    if path.exists():
        return str(path.resolve())
    if params.model.startswith((".", "/", "~")) or params.model.count("/") > 1:
        raise ConfigError(f"model folder {params.model!r} does not exist: fix `model` in competition.toml")
    return params.model


def attention_arguments(params) -> dict:
    """from_pretrained's attn_implementation when the candidate names one ("" = transformers' choice)."""
    return {"attn_implementation": params.attn_implementation} if params.attn_implementation else {}


def load_error(params, error: Exception) -> ConfigError:
    if params.attn_implementation and params.attn_implementation in str(error):
        return ConfigError(f"model {params.model!r} cannot use attn_implementation = {params.attn_implementation!r} "
                           f"here ({type(error).__name__}: {str(error).splitlines()[0]}): choose sdpa or eager, "
                           "or install what it needs (e.g. flash-attn on a CUDA machine)")
    return ConfigError(f"cannot load model {params.model!r} ({type(error).__name__}: {str(error).splitlines()[0]}): "
                       "point `model` at a local folder with config.json and safetensors weights, a .gguf file, "
                       "or a hub id reachable from this machine")


BNB_CPU_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"


def _not_the_cpu_kernel_fetch(record: logging.LogRecord) -> bool:
    return "gemm_4bit_forward from kernels-community" not in record.getMessage()


def quiet_bitsandbytes_kernel_fetch() -> None:
    """Drop the warning bitsandbytes logs when, on import on a CPU with AVX512-BF16, it cannot fetch
    an optional 4-bit kernel from the hub (it falls back to its own): the warning tells the user to
    "set trust_remote_code=True", which our candidates' `trust_remote_code` key has nothing to do with."""
    logger = logging.getLogger(BNB_CPU_KERNEL_LOGGER)  # the logger bitsandbytes gets when it is imported later
    if _not_the_cpu_kernel_fetch not in logger.filters:
        logger.addFilter(_not_the_cpu_kernel_fetch)


def load_tokenizer(params, source: str | None = None):
    """The tokenizer of `model` (or `source`), with EOS as pad token when it has none. Every model
    path starts here, so this is where the libraries' own bars (and one misleading bitsandbytes
    warning) are silenced."""
    from transformers import AutoTokenizer

    quiet_library_bars()
    quiet_bitsandbytes_kernel_fetch()

    try:
        tokenizer = AutoTokenizer.from_pretrained(source or model_source(params),
                                                  trust_remote_code=params.trust_remote_code)
    except (OSError, ValueError) as error:
        raise load_error(params, error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(params, device: str, adapter: Path | None = None, trainable: bool = False):
    """The causal LM, quantized per `quantization`, with a saved LoRA adapter attached when given."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_source(params), quantization_config=bnb_config(params, device), dtype=compute_dtype(device),
            device_map=device_map(device), trust_remote_code=params.trust_remote_code,
            use_safetensors=True, **attention_arguments(params))
    except (OSError, ValueError, ImportError) as error:
        raise load_error(params, error) from None
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    return model


def predicts_dequantised(params, device: str) -> bool:
    """Whether a quantized model predicts through a dequantised copy: always without CUDA, where
    bitsandbytes' 4-bit and 8-bit layers have no fast kernels (SmolLM2-135M on 2 cores: 150 rows
    unfinished after 8 minutes in 4-bit, 95 s dequantised). The copy holds the same weights (the
    quantized values, in float32), so the outputs match up to rounding; it costs 4 bytes per
    parameter of memory instead of about half a byte."""
    return params.quantization != "none" and device != "cuda"


def note_dequantised(name: str, params) -> None:
    """Say, once per candidate and process, that candidate `name` predicts through a dequantised copy."""
    say_once(f"{name}: no CUDA here, so the {params.quantization} model predicts through a float32 copy of the "
             "same weights (bitsandbytes' quantized layers generate many times slower on CPU); the copy needs 4 "
             "bytes of memory per parameter")


def dequantised_causal_lm(params, device: str):
    """The quantized base as float layers holding its quantized values (see predicts_dequantised)."""
    return load_causal_lm(params, device).dequantize(dtype=compute_dtype(device))


def merged_causal_lm(params, device: str, adapter: Path, dtype=None):
    """The base with the LoRA adapter merged in, as plain (unquantized) layers in `dtype` (default:
    compute_dtype, bf16 on CUDA). A quantized base is loaded as trained and dequantised before the
    merge, as peft advises: merging into 4-bit layers would requantize and round."""
    from peft import PeftModel

    base = load_causal_lm(params, device)
    dtype = dtype or compute_dtype(device)
    if params.quantization != "none":
        base = base.dequantize(dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().to(dtype)


def completion_loss(model, tokenizer, prompts: list[str], completions: list[str]) -> float:
    """Mean token loss of `completions` given `prompts` (prompt tokens masked), one batch."""
    import torch

    rows = []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        output = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), labels=labels.to(device))
    return float(output.loss)


def rows_kept_apart(model, tokenizer) -> bool:
    """Whether `model` keeps rows packed into one sequence apart (what packing and padding_free
    rely on): the logits of a row after another one, positions restarting and no attention mask,
    equal those of the row alone. transformers' own masks do this from position_ids for most
    decoder models, with any attention implementation; others (ALiBi, learnt positions from the
    mask, remote code) let the second row see the first."""
    import torch

    first = tokenizer("#Person1#: 안녕하세요. 오늘 회의는 몇 시인가요?",
                      add_special_tokens=False)["input_ids"]
    second = tokenizer("#Person2#: 세 시에 시작해요.", add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0]
        packed = model(input_ids=torch.tensor([first + second], device=device), use_cache=False,
                       position_ids=torch.tensor([list(range(len(first))) + list(range(len(second)))],
                                                 device=device)).logits[0, len(first):]
    model.train(was_training)
    # float32 (CPU) agrees to rounding; bf16 kernels differ a little with the sequence length
    tolerance = 1e-4 if alone.dtype == torch.float32 else 3e-2
    return float((alone.float() - packed.float()).abs().max()) <= tolerance * max(1.0, float(alone.abs().max()))
