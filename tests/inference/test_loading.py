"""Model resolution: packaged short names, the GGUF conversion cache, folders and hub ids."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from inference import loading
from inference.errors import ModelLoadError
from inference.loading import convert_gguf, gguf_cache_folder, packaged_model_path, resolve_model


def test_short_names_resolve_to_the_packaged_models(model_cache_dir):
    chat = resolve_model("smollm2-135m-instruct", cache_dir=model_cache_dir)
    embed = resolve_model("all-minilm-l6-v2", cache_dir=model_cache_dir)
    assert (chat.task, chat.default_name) == ("generate", "smollm2-135m-instruct")
    assert chat.gguf == packaged_model_path("smollm2-135m-instruct")  # llama.cpp loads it as it is
    assert (chat.path / "tokenizer.json").exists()
    assert not (chat.path / "model.safetensors").exists()  # weights only when transformers asks
    assert (embed.task, embed.default_name) == ("embed", "all-minilm-l6-v2")
    assert (embed.path / "modules.json").exists()


def test_second_conversion_reuses_the_converted_gguf(model_cache_dir, monkeypatch):
    gguf = packaged_model_path("smollm2-135m-instruct")
    convert_gguf(gguf, cache_dir=model_cache_dir)  # converts if needed

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(loading, "_convert_into", no_conversion)
    again = convert_gguf(gguf, cache_dir=model_cache_dir)
    assert again == gguf_cache_folder(gguf, cache_dir=model_cache_dir)


def test_gguf_file_is_named_after_its_file_and_converts_into_the_cache_under_a_lock(tmp_path, monkeypatch):
    gguf = tmp_path / "Tiny-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def fake_convert(source: Path, out: Path) -> None:
        calls.append(source)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_into", fake_convert)
    monkeypatch.setattr(loading, "gguf_tokenizer", lambda gguf, cache_dir: cache_dir / "tokenizer")
    cache = tmp_path / "cache"
    resolved = resolve_model(str(gguf), cache_dir=cache)
    assert (resolved.default_name, resolved.task, resolved.gguf) == ("tiny-model", "generate", gguf)
    first = convert_gguf(gguf, cache_dir=cache)
    second = convert_gguf(gguf, cache_dir=cache)
    assert first == second
    assert calls == [gguf]
    assert (first / "config.json").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_failed_conversion_leaves_no_cache_folder(tmp_path, monkeypatch):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"not really")

    def failing(source: Path, out: Path) -> None:
        (out / "partial").write_text("x")
        raise ValueError("bad magic\nsecond line")

    monkeypatch.setattr(loading, "_convert_into", failing)
    with pytest.raises(ModelLoadError, match="bad magic") as caught:
        convert_gguf(gguf, cache_dir=tmp_path / "cache")
    assert "\n" not in str(caught.value)
    assert not gguf_cache_folder(gguf, cache_dir=tmp_path / "cache").exists()


def test_hub_id_while_offline_fails_with_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="offline") as caught:
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct", cache_dir=tmp_path)
    assert "\n" not in str(caught.value)


def test_missing_path_and_plain_folder_are_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="No model at"):
        resolve_model(str(tmp_path / "nowhere"), cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model(str(tmp_path), cache_dir=tmp_path)


@pytest.mark.slow
def test_converted_model_answers_like_the_gguf_it_came_from(model_cache_dir):
    """Dequantise-and-save must not change the model: same greedy output from both."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_model_path("smollm2-135m-instruct")
    converted = convert_gguf(gguf, cache_dir=model_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    prompt: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    answers = []
    models: tuple[Any, ...] = (
        AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32),
        AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32),
    )
    for model in models:
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
        answers.append(tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True))
    assert answers[0] == answers[1]
    assert "Paris" in answers[1]


def _slow_fake_convert(gguf: Path, out: Path) -> None:
    with open(gguf.parent / "conversions.log", "a") as log:
        log.write("converted\n")
    time.sleep(0.5)  # long enough for the other process to arrive while this one converts
    (out / "config.json").write_text("{}")


def _convert_in_child(gguf: str, cache: str) -> None:
    loading._convert_into = _slow_fake_convert  # the child is forked: patch its own copy
    convert_gguf(Path(gguf), cache_dir=Path(cache))


def test_processes_converting_at_once_convert_only_once(tmp_path):
    gguf = tmp_path / "shared.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_convert_in_child, args=(str(gguf), str(cache))) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
    assert [child.exitcode for child in children] == [0, 0]
    assert (tmp_path / "conversions.log").read_text() == "converted\n"
    assert (gguf_cache_folder(gguf, cache_dir=cache) / "config.json").exists()
