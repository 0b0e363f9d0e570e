"""A GGUF converted to a Hugging Face folder is a plain float model: no GGUF `quantization_config` left.

vLLM refuses a folder whose config.json names the GGUF quantization ("Unknown
quantization method: gguf"), and transformers attaches a GGUF quantizer to it
and warns when it is loaded in float16.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from inference import loading
from inference.errors import ModelLoadError
from inference.loading import convert_gguf, packaged_model_path


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_converted_folder_has_no_quantization_config(model_cache_dir):
    folder = convert_gguf(packaged_model_path("smollm2-135m-instruct"), cache_dir=model_cache_dir)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_a_converted_folder_loads_in_transformers_without_the_gguf_warning(model_cache_dir):
    from transformers import AutoModelForCausalLM

    folder = convert_gguf(packaged_model_path("smollm2-135m-instruct"), cache_dir=model_cache_dir)
    records = Records()
    library = logging.getLogger("transformers")  # transformers does not propagate to the root logger
    library.addHandler(records)
    try:
        plain = AutoModelForCausalLM.from_pretrained(folder)
        half = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16)
    finally:
        library.removeHandler(records)
    assert [m for m in records.messages if "gguf" in m.lower() or "quantiz" in m.lower()] == []
    assert getattr(plain, "hf_quantizer", None) is None  # no GGUF quantizer on float weights
    assert getattr(half, "hf_quantizer", None) is None
    assert (plain.dtype, half.dtype) == (torch.float32, torch.float16)


def test_a_folder_converted_before_the_fix_is_converted_again(tmp_path, monkeypatch):
    gguf = tmp_path / "Tiny-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    stat = gguf.stat()
    # Where the first conversion format kept this file's folder, with the config it wrote.
    first = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stale = cache / f"{gguf.stem}-{first}"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gguf"}}))
    calls = []

    def convert(source: Path, out: Path) -> None:
        calls.append(source)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_into", convert)
    folder = convert_gguf(gguf, cache_dir=cache)
    assert calls == [gguf]
    assert folder != stale
    assert json.loads((folder / "config.json").read_text()) == {}


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_conversion_leaves_the_process_that_asked_for_it_no_larger(tmp_path):
    """It runs in a child: in the worker itself it left 660 MiB behind for the worker's lifetime."""
    before = resident_mib()
    folder = convert_gguf(packaged_model_path("smollm2-135m-instruct"), cache_dir=tmp_path)
    assert (folder / "model.safetensors").stat().st_size > 500_000_000  # float32 weights of 135M parameters
    assert resident_mib() - before < 100


def test_a_failed_conversion_names_the_childs_error(tmp_path):
    fake = tmp_path / "Broken.Q4_0.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"^Could not convert Broken.Q4_0.gguf: .*GGUF"):
        convert_gguf(fake, cache_dir=tmp_path / "cache")
