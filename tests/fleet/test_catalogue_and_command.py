"""What an agent reports about its models, and `manage.py deploy` as an operator types it."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from fleet.catalogue import catalogue, estimate_memory, weights_bytes
from fleet.models import Deployment, Node


def test_the_catalogue_lists_packaged_models_folders_and_gguf_files(tmp_path: Path):
    folder = tmp_path / "org" / "tiny-llama"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    (folder / "tokenizer.json").write_bytes(b"y" * 50)  # not a weight
    (tmp_path / "q.gguf").write_bytes(b"z" * 300)
    (tmp_path / "notes.txt").write_text("not a model")
    found = {entry["path"]: entry["bytes"] for entry in catalogue([str(tmp_path)])}
    assert found[str(folder)] == 1000
    assert found[str(tmp_path / "q.gguf")] == 300
    assert "smollm2-135m-instruct" in found
    assert len(found) == 2 + len([p for p in found if "/" not in p])
    assert weights_bytes(folder) == 1000
    assert estimate_memory(1000) == 768 * 2**20 + 2000


@pytest.mark.django_db
def test_deploy_creates_scales_updates_and_lists():
    Node.objects.create(
        name="a",
        address="127.0.0.1",
        memory_bytes=64 * 2**30,
        expires_at=timezone.now() + timedelta(seconds=30),
    )
    out = StringIO()
    call_command("deploy", "create", "echo", "--model-path", "canned", "--backend", "canned", stdout=out)
    assert out.getvalue().strip() == "echo: 0/1 ready, 1 starting"
    call_command("deploy", "create", "echo", "--model-path", "other", "--if-absent", stdout=out)
    assert Deployment.objects.get(name="echo").model_path == "canned"
    with pytest.raises(CommandError, match="exists: use `deploy update`"):
        call_command("deploy", "create", "echo", "--model-path", "canned")
    call_command("deploy", "scale", "echo", "3", stdout=out)
    call_command("deploy", "update", "echo", "--max-concurrency", "4", stdout=out)
    deployment = Deployment.objects.get(name="echo")
    assert (deployment.replicas, deployment.max_concurrency, deployment.generation) == (3, 4, 2)
    listing = StringIO()
    call_command("deploy", "list", stdout=listing)
    row = json.loads(listing.getvalue())
    assert (row["name"], row["desired"], row["starting"]) == ("echo", 3, 3)
    with pytest.raises(CommandError, match="'--bogus' is not an option a deployment may set"):
        call_command("deploy", "update", "echo", "--extra-args", "--bogus 1")
    with pytest.raises(CommandError, match="No deployment named 'nope'"):
        call_command("deploy", "scale", "nope", "1")
    with pytest.raises(CommandError, match="Not ready: echo 0/3 ready"):
        call_command("deploy", "wait", "--timeout", "0")
