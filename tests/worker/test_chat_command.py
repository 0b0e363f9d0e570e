"""`manage.py chat`: a multi-turn terminal chat over an in-process engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import REPO_ROOT, subprocess_env


def run_chat(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "chat", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chat_answers_each_turn_and_debug_prints_speed() -> None:
    result = run_chat(
        "--model-path", "canned", "--backend", "canned", "--max-tokens", "3", "--debug", stdin="hi\nagain\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ASSISTANT: The quick brown") == 2
    assert result.stdout.count("tokens/s]") == 2


def test_chat_refuses_bad_sampling_values() -> None:
    result = run_chat("--model-path", "canned", "--backend", "canned", "--temperature", "7", stdin="")
    assert result.returncode != 0
    assert "temperature" in result.stderr


@pytest.mark.slow
def test_chat_with_smollm2_answers_every_turn_with_history() -> None:
    stdin = "My name is Ada. Reply OK.\nWhat is the capital of France?\n"
    result = run_chat(
        "--model-path",
        "smollm2-135m-instruct",
        "--device",
        "cpu",
        "--temperature",
        "0",
        "--max-tokens",
        "20",
        stdin=stdin,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ASSISTANT:") == 2
    assert "Paris" in result.stdout
