"""Fixtures of the fleet's admin tests: a logged-in superuser, an online node, the deployment form."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from fleet.models import Node

ADD = "/admin/fleet/deployment/add/"
# Every field of the deployment form, at its default (tests add the name, model path and extra options).
FORM = {
    "model_names": "",
    "backend": "canned",
    "role": "both",
    "replicas": "2",
    "max_concurrency": "16",
    "dtype": "auto",
    "threads": "",
    "max_model_len": "",
    "runs_on": "agents",
    "placement": "spread",
    "required_labels": "{}",
    "memory_per_replica": str(2**30),
    "instances-TOTAL_FORMS": "0",
    "instances-INITIAL_FORMS": "0",
    "events-TOTAL_FORMS": "0",
    "events-INITIAL_FORMS": "0",
    "min_replicas": "",
    "max_replicas": "",
    "idle_seconds": "600",
    "target_queue_wait": "1",
    "target_in_flight": "0.8",
    "scale_up_after": "15",
    "cooldown": "60",
    "priority": "0",
    "cold_start_timeout": "120",
}


@pytest.fixture
def staff() -> Client:
    user = get_user_model().objects.create_superuser("root", password="pw-123456789")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def node() -> Node:
    """An online node whose catalogue holds a .gguf file and the packaged SmolLM2."""
    return Node.objects.create(
        name="node-a",
        address="127.0.0.1",
        memory_bytes=16 * 2**30,
        catalogue=[
            {"path": "/models/qwen.gguf", "bytes": 2**30},
            {"path": "smollm2-135m-instruct", "bytes": 1},
        ],
        expires_at=timezone.now() + timedelta(seconds=30),
    )
