"""What an agent reports about its machine: CPUs, memory, GPUs, and the models it can serve.

The catalogue lists the packaged models and, under each of MODEL_DIRS, every
Hugging Face folder (a config.json beside weights) and every .gguf file, with
the bytes of its weights: the scheduler's memory estimate starts from them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inference.errors import ModelLoadError
from inference.loading import PACKAGED_MODELS, packaged_model_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
# A Python worker with torch and an engine loaded, before the weights and the KV cache.
RUNTIME_BYTES = 768 * 2**20
MAX_DEPTH = 3


def weights_bytes(path: Path) -> int:
    """The size of a model's weights: the .gguf file, or a folder's weight files."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def estimate_memory(weights: int) -> int:
    """A replica's memory: its runtime, its weights, and as much again for widening and the KV cache."""
    return RUNTIME_BYTES + 2 * weights


def _models_under(root: Path, depth: int = 0) -> Iterable[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    if (root / "config.json").is_file() and any(e.suffix in WEIGHT_SUFFIXES for e in entries):
        yield root
        return
    for entry in entries:
        if entry.is_file() and entry.suffix == ".gguf":
            yield entry
        elif entry.is_dir() and depth < MAX_DEPTH and not entry.name.startswith("."):
            yield from _models_under(entry, depth + 1)


def catalogue(model_dirs: Iterable[str]) -> list[dict[str, Any]]:
    """Every model this machine can serve: [{path, bytes}], packaged ones under their short names."""
    found: list[dict[str, Any]] = []
    for name in sorted(PACKAGED_MODELS):
        try:
            found.append({"path": name, "bytes": weights_bytes(packaged_model_path(name))})
        except ModelLoadError:
            continue  # its package is not installed here
    for folder in model_dirs:
        for model in _models_under(Path(folder).expanduser()):
            found.append({"path": str(model), "bytes": weights_bytes(model)})
    return found


def memory() -> tuple[int, int]:
    """Total and available memory in bytes (Linux's /proc/meminfo; (0, 0) elsewhere)."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return fields.get("MemTotal", 0), fields.get("MemAvailable", 0)


def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs with their memory, from nvidia-smi when it is installed."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        if name and mib.strip().isdigit():
            found.append({"name": name.strip(), "memory_bytes": int(mib) * 2**20})
    return found


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
