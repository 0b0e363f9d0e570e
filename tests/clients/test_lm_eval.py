"""lm-evaluation-harness through the portal scores what its own `hf` backend scores on the same weights.

A client nobody here wrote, run as its users run it: `local-completions` with
its defaults (token-id prompts, `echo`, `max_tokens: 1`, `logprobs: 1`) and
with `batch_size` 4 (four prompts a request), against a real portal in front
of a real SmolLM2 worker (transformers, float32). The reference is the `hf`
backend on the folder that worker loads. The tasks and their data are in
lm_eval_tasks/: ten multiple-choice questions (loglikelihood) and three
texts scored whole (loglikelihood_rolling, as wikitext is).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from inference.loading import convert_gguf, packaged_model_path
from portal import env
from tests.clients.conftest import LivePortal

pytestmark = pytest.mark.slow
TASKS = Path(__file__).parent / "lm_eval_tasks"
TOLERANCE = 1e-4


def tasks(cache: Path) -> list[dict[str, Any]]:
    """The repository's task definitions, their data files found beside them, nothing downloaded."""
    configs = []
    for name in ("portal_mc", "portal_perplexity"):
        config = yaml.safe_load((TASKS / f"{name}.yaml").read_text())
        files = config["dataset_kwargs"]["data_files"]
        config["dataset_kwargs"] = {
            "data_files": {split: str(TASKS / path) for split, path in files.items()},
            "cache_dir": str(cache),
        }
        configs.append(config)
    return configs


def evaluate(model: str, model_args: dict[str, Any], batch_size: int, cache: Path) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks(cache),
        batch_size=batch_size,
        task_manager=TaskManager(include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    assert results is not None
    return results


def loglikelihoods(results: dict[str, Any]) -> dict[str, list[float]]:
    """Every score lm-eval computed: each choice of each question, each text's total."""
    samples = results["samples"]
    choices = [ll for s in samples["portal_mc"] for ll, _ in s["filtered_resps"]]
    texts = [s["filtered_resps"][0] for s in samples["portal_perplexity"]]
    return {"portal_mc": choices, "portal_perplexity": texts}


def metrics(results: dict[str, Any]) -> dict[str, float]:
    return {
        f"{task}/{name}": value
        for task, row in results["results"].items()
        for name, value in row.items()
        if name.endswith(",none") and isinstance(value, float)
    }


def assert_same_scores(ours: dict[str, Any], reference: dict[str, Any]) -> float:
    """Every loglikelihood and metric within TOLERANCE of the reference; return the largest difference."""
    ours_ll, reference_ll = loglikelihoods(ours), loglikelihoods(reference)
    assert [len(v) for v in ours_ll.values()] == [40, 3]
    worst = 0.0
    for task, values in reference_ll.items():
        for mine, theirs in zip(ours_ll[task], values, strict=True):
            assert mine == pytest.approx(theirs, abs=TOLERANCE), task
            worst = max(worst, abs(mine - theirs))
    assert metrics(ours).keys() == metrics(reference).keys()
    for name, value in metrics(reference).items():
        assert math.isfinite(value)
        assert metrics(ours)[name] == pytest.approx(value, abs=TOLERANCE), name
    return worst


def test_lm_eval_scores_through_the_portal_equal_its_hf_backend(
    smollm2_portal: LivePortal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = str(convert_gguf(packaged_model_path("smollm2-135m-instruct"), cache_dir=env.MODEL_CACHE_DIR))
    # One thread, as the worker has: on 2 cores, two processes' spinning threads slow both tenfold.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = evaluate("hf", {"pretrained": folder, "dtype": "float32", "device": "cpu"}, 1, tmp_path)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("OPENAI_API_KEY", smollm2_portal.api_key)  # local-completions' bearer token
    completions = {
        "model": smollm2_portal.model,
        "base_url": f"{smollm2_portal.v1}/completions",
        "tokenizer_backend": "huggingface",
        "tokenizer": folder,
    }
    for batch_size in (1, 4):
        ours = evaluate("local-completions", completions, batch_size, tmp_path)
        worst = assert_same_scores(ours, reference)
        print(f"batch_size {batch_size}: largest loglikelihood difference {worst:.2e}; {metrics(ours)}")
    print(f"hf: {metrics(reference)}")
