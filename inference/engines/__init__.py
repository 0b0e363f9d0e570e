"""Build the engine a worker serves: `create_engine(config, backend)`.

Heavy libraries (torch, transformers, sentence-transformers, vllm) are imported
inside the chosen engine module only, so the web process imports this package
without loading any of them.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
from pathlib import Path

from inference.engines.base import Engine, EngineConfig
from inference.errors import InvalidRequest, ModelLoadError

BACKENDS = ("auto", "llamacpp", "transformers", "vllm", "canned")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "modelportal"


def create_engine(config: EngineConfig, backend: str = "auto") -> Engine:
    """Load the model `config.model_path` names into the backend that fits it.

    "auto" picks the embedding engine for a sentence-transformers model, vLLM
    when it is installed and the device is CUDA, llama.cpp for a .gguf file on
    a CPU when xllamacpp is installed, and transformers otherwise. llama.cpp
    also serves a Llama-family folder when asked, exported to a GGUF once.
    Raises ModelLoadError (one-line message) when the model cannot be found.
    """
    if backend not in BACKENDS:
        raise InvalidRequest(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "canned":
        from inference.engines.canned import CannedTokenEngine

        return CannedTokenEngine(config)
    from inference.loading import resolve_model, weights_folder

    cache_dir = Path(config.cache_dir) if config.cache_dir else DEFAULT_CACHE_DIR
    resolved = resolve_model(config.model_path, cache_dir=cache_dir)
    if resolved.task == "embed" and resolved.gguf is not None:
        backend = "llamacpp"  # an embedding GGUF: sentence-transformers cannot load it
    if resolved.task == "embed" and backend != "llamacpp":
        from inference.engines.embedding_engine import EmbeddingEngine

        return EmbeddingEngine(config, folder=resolved.path, default_name=resolved.default_name)
    if backend == "auto":
        backend = "vllm" if _vllm_fits(config.device) else "transformers"
        if backend == "transformers" and resolved.gguf and _llamacpp_fits(config.device):
            backend = "llamacpp"
    if backend == "llamacpp":
        from inference.engines.llamacpp_engine import LlamaCppEngine
        from inference.loading import gguf_for_llamacpp, gguf_from_folder

        if config.device == "cuda":
            raise ModelLoadError("--backend llamacpp runs on the CPU here; use --device cpu or auto.")
        if resolved.gguf is not None:
            gguf = gguf_for_llamacpp(resolved.gguf, config.dtype, cache_dir=cache_dir)
        else:  # a Hugging Face folder: exported to a GGUF once
            gguf = gguf_from_folder(resolved.path, config.dtype, cache_dir=cache_dir)
        return LlamaCppEngine(
            config, gguf=gguf, folder=resolved.path, default_name=resolved.default_name, task=resolved.task
        )
    folder = weights_folder(resolved, cache_dir=cache_dir)
    if backend == "vllm":
        from inference.engines.vllm_engine import VllmEngine

        return VllmEngine(config, folder=folder, default_name=resolved.default_name)
    from inference.engines.transformers_engine import TransformersEngine

    return TransformersEngine(config, folder=folder, default_name=resolved.default_name)


def _llamacpp_fits(device: str) -> bool:
    """Whether xllamacpp is installed and the model runs on the CPU (its PyPI wheel is a CPU build)."""
    if device not in ("auto", "cpu") or importlib.util.find_spec("xllamacpp") is None:
        return False
    return device == "cpu" or not _cuda_available()


def _vllm_fits(device: str) -> bool:
    if device not in ("auto", "cuda") or importlib.util.find_spec("vllm") is None:
        return False
    return _cuda_available()


def _cuda_available() -> bool:
    """torch's answer, asked only where an NVIDIA driver is: importing torch costs 2 s and 250 MiB."""
    if not Path("/proc/driver/nvidia/version").exists() and ctypes.util.find_library("cuda") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())
