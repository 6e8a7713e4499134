"""Which model a result was made with: a local model folder's (or .gguf file's) fingerprint, hashed
into the config hash of every candidate and training that points at it, so replacing the weights
in place makes those results stale."""
from __future__ import annotations

from pathlib import Path

from ..hashing import file_sha256
from .chat import Endpoint
from .gguf import gguf_fingerprint, is_gguf
from .params import Model

# Weights up to this size are hashed whole; larger ones by name, size and index file (a 7B model
# would take minutes to hash on every run).
FULL_HASH_BYTES = 64 * 2 ** 20


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_fingerprint(model: str) -> dict | None:
    """For a local model folder: its files' names and sizes, the sha256 of config.json and of any
    weight index, and of the weights themselves when they total at most FULL_HASH_BYTES. None for
    a hub id (its name is in the settings already). A .gguf file: its name, size and sha256."""
    folder = Path(model).expanduser()
    if is_gguf(model) and folder.is_file():
        return gguf_fingerprint(folder)
    if not folder.is_dir():
        return None
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    sizes = {str(path.relative_to(folder)): path.stat().st_size for path in files}
    weights = [path for path in files if path.name.endswith(_WEIGHT_SUFFIXES)]
    fingerprint = {"files": sizes, "hashed": {}}
    for path in files:
        if path.name == "config.json" or path.name.endswith(".index.json"):
            fingerprint["hashed"][str(path.relative_to(folder))] = file_sha256(path)
    if sum(path.stat().st_size for path in weights) <= FULL_HASH_BYTES:
        for path in weights:
            fingerprint["hashed"][str(path.relative_to(folder))] = file_sha256(path)
    return fingerprint


def params_models(params) -> dict:
    """Fingerprints of the local model folders a candidate's params point at (the `model` of its
    Model part, or of its Endpoint part: a served local folder)."""
    model = params.model if isinstance(params, (Model, Endpoint)) else ""
    fingerprint = model_fingerprint(model) if model else None
    return {"model": fingerprint} if fingerprint is not None else {}
