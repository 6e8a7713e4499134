"""A `.gguf` file as a candidate's `model`: converted once, through transformers' GGUF support (the
optional `gguf` package, `pip install 'competition[gguf]'`), into an ordinary safetensors folder
(float32 weights, the file's tokenizer and chat template) that every kind then loads as a model
folder, so 4-bit quantisation, LoRA and export start from plain weights.

The folder is kept under the workspace's runs/.cache/gguf/SHA256/ (commands run in the workspace,
where a relative `model` path resolves too), keyed by the file's sha256, so a renamed or copied
file reuses it and a changed file gets a new one. Hashing a large file takes seconds, so each
file's sha256 is remembered by path, size and modification time.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from ..errors import ConfigError
from ..progress import on_terminal, quiet_library_bars

MAGIC = b"GGUF"  # the first four bytes of every GGUF file
CACHE_DIR = Path("runs") / ".cache" / "gguf"
DONE_FILE = "source.json"  # written last: a folder without it is an unfinished conversion
SHA_MEMO = "sha256.json"


def is_gguf(model: str) -> bool:
    """Whether `model` names a GGUF file (by its extension, as llama.cpp and the hub name them)."""
    return str(model).strip().lower().endswith(".gguf")


def cache_root() -> Path:
    return Path.cwd() / CACHE_DIR


def check_gguf_file(path: Path) -> None:
    """Refuse a missing file, or one that does not start with the GGUF magic bytes."""
    if not path.is_file():
        raise ConfigError(f"GGUF file {str(path)!r} does not exist: fix `model` in competition.toml")
    with open(path, "rb") as file:
        head = file.read(len(MAGIC))
    if head != MAGIC:
        raise ConfigError(f"{str(path)!r} is not a GGUF file (it starts with {head!r}, not {MAGIC!r}): point `model` "
                          "at a .gguf file from llama.cpp or the hub, or at a model folder with config.json")


def gguf_sha256(path: Path) -> str:
    """The file's sha256, remembered in runs/.cache/gguf/sha256.json by path, size and mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    key = str(path)
    memo_path = cache_root() / SHA_MEMO
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    known = memo.get(key) if isinstance(memo, dict) else None
    if isinstance(known, dict) and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        return known["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    memo = memo if isinstance(memo, dict) else {}
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    partial = memo_path.with_name(f"{SHA_MEMO}.{os.getpid()}")
    partial.write_text(json.dumps(memo, indent=1), encoding="utf-8")
    os.replace(partial, memo_path)
    return sha


def gguf_fingerprint(path: Path) -> dict:
    """What provenance records for a GGUF `model` (as it records a folder's files): name, size, sha256."""
    path = Path(path)
    return {"gguf": path.name, "size": path.stat().st_size, "sha256": gguf_sha256(path)}


def converted_folder(model: str) -> Path:
    """The safetensors folder converted from the GGUF file `model`, converting it on first use."""
    path = Path(model).expanduser()
    check_gguf_file(path)
    sha = gguf_sha256(path)
    folder = cache_root() / sha
    if (folder / DONE_FILE).exists():
        return folder
    partial = folder.with_name(f"{sha}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        convert(path, partial)
        (partial / DONE_FILE).write_text(json.dumps({"gguf": path.name, "sha256": sha, "size": path.stat().st_size},
                                                    indent=1), encoding="utf-8")
        if folder.exists():  # a conversion cut off before its DONE_FILE, or another process's finished one
            if (folder / DONE_FILE).exists():
                return folder
            shutil.rmtree(folder)
        os.rename(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def convert(path: Path, out: Path) -> None:
    """Load the GGUF file with transformers (dequantised to float32) and save model and tokenizer
    as a safetensors folder in `out`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    dequantize = {}
    if hasattr(transformers, "GgufConfig"):  # newer transformers may keep GGUF blocks packed unless told
        dequantize["quantization_config"] = transformers.GgufConfig(dequantize=True)
    print(f"{path.name}: converting to a safetensors folder under {CACHE_DIR} (once per file)", file=sys.stderr, flush=True)
    quiet_library_bars()
    try:
        with tensor_bar_off_a_terminal():
            tokenizer = AutoTokenizer.from_pretrained(**source)
            model = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32, **dequantize)
    except ImportError as error:
        if "gguf" not in str(error).lower():
            raise
        raise ConfigError(f"model {str(path)!r} is a GGUF file, which needs the `gguf` package: "
                          "pip install 'competition[gguf]' (or pip install gguf)") from None
    except (ValueError, NotImplementedError) as error:
        # transformers' own refusals: an architecture it has no GGUF mapping for (ValueError "... is
        # not supported") or a block type it cannot dequantise (NotImplementedError). Any other
        # error is a bug or a damaged file, and keeps its traceback.
        if isinstance(error, ValueError) and "not supported" not in str(error):
            raise
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"transformers {transformers.__version__} cannot dequantise GGUF file {str(path)!r} "
                          f"({type(error).__name__}: {first}): use a GGUF of an architecture transformers reads "
                          "(llama, mistral, qwen2, qwen3, gemma, phi3, ...) or a model folder with safetensors weights") \
            from None
    # A dequantised GGUF model still carries the GGUF quantizer, which refuses to save: what remains
    # is an ordinary float model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


@contextlib.contextmanager
def tensor_bar_off_a_terminal():
    """transformers' GGUF reader draws its own tqdm bar per file ("Converting and de-quantizing GGUF
    tensors"), which its disable_progress_bar does not reach: off a terminal it is turned off here,
    else its carriage returns make one endless line in a log (see progress.quiet_library_bars)."""
    if on_terminal():
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as reader

    bar = reader.tqdm
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar
