"""The engine factory: backend choice, and a web process that does not pay for torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from inference.engines import create_engine
from inference.engines.base import EngineConfig
from inference.engines.canned import CannedTokenEngine
from inference.errors import InvalidRequest, ModelLoadError


def test_canned_backend_needs_no_model():
    engine = create_engine(EngineConfig("anything"), backend="canned")
    assert isinstance(engine, CannedTokenEngine)


def test_unknown_backend_is_refused():
    with pytest.raises(InvalidRequest, match="Unknown backend"):
        create_engine(EngineConfig("smollm2-135m-instruct"), backend="tensorrt")


def test_unknown_model_fails_with_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError):
        create_engine(EngineConfig(str(tmp_path / "missing"), cache_dir=str(tmp_path)))


def test_importing_the_engine_package_does_not_import_torch():
    code = (
        "import sys, inference.engines, inference.loading, inference.templates; "
        "heavy = {'torch', 'transformers', 'vllm', 'sentence_transformers'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
