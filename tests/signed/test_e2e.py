"""End to end: the client module against a live portal (daphne) and real model workers."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx2
import jsonschema
import pytest

from portal.signed.client import SignedClient
from portal.signed.pipelines.base import Pipeline
from portal.signed.pipelines.chat import ChatPipeline
from portal.signed.pipelines.embedding import EmbeddingPipeline
from registry.models import UsageRecord
from registry.services.credentials import create_app_credential
from signing import sm2
from tests.portal_process import PortalProcess, start_portal
from tests.processes import start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(400)]

QUESTION = {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 32}


@pytest.fixture
def clients(transactional_db: None) -> dict[str, SignedClient]:
    private_key = sm2.generate_private_key()
    credential, secret = create_app_credential(
        app_id="e2e-app", sm2_public_key=sm2.public_key_from_private(private_key)
    )
    return {
        sign_type: SignedClient(
            "", credential.app_id, secret, sign_type=sign_type, sm2_private_key=private_key
        )
        for sign_type in ("SHA256", "SM2")
    }


@pytest.fixture
def portal() -> Iterator[PortalProcess]:
    with start_portal(extra_env={"WORKER_CACHE_SECONDS": "0.2"}) as process:
        yield process


def assert_declared_result(pipeline: type[Pipeline], data: dict) -> None:
    """The reply's data, less msg and requestId, is what the pipeline declares (and /api/schema/ says)."""
    result = {key: value for key, value in data.items() if key not in ("msg", "requestId")}
    jsonschema.Draft4Validator(pipeline.result_schema).validate(result)


def _signed_usage_count(model_name: str) -> int:
    return UsageRecord.objects.filter(
        source="signed", app_credential__app_id="e2e-app", model_name=model_name, status="ok"
    ).count()


def test_chat_answers_paris_with_sha256_and_sm2(
    clients: dict[str, SignedClient], portal: PortalProcess
) -> None:
    with start_worker("--model-path", "smollm2-135m-instruct", "--device", "cpu", timeout=240):
        for sign_type, client in clients.items():
            client.base_url = portal.url
            reply = client.call("chat", {**QUESTION, "model": "smollm2-135m-instruct"})

            assert reply["code"] == 0, (sign_type, reply)
            assert reply["success"] is True
            assert "Paris" in reply["data"]["answer"]
            assert_declared_result(ChatPipeline, reply["data"])
            assert reply["data"]["usage"]["completion_tokens"] > 0
        # The relay writes the usage, attributed to the app, off the response path.
        assert wait_for(lambda: _signed_usage_count("smollm2-135m-instruct") == 2, timeout=10)


def test_embedding_returns_one_unit_vector_per_text_and_refuses_replay(
    clients: dict[str, SignedClient], portal: PortalProcess
) -> None:
    with start_worker("--model-path", "all-minilm-l6-v2", "--device", "cpu", timeout=240):
        for sign_type, client in clients.items():
            client.base_url = portal.url
            reply = client.call("embedding", {"texts": ["hello", "世界"], "model": "all-minilm-l6-v2"})

            assert reply["code"] == 0, (sign_type, reply)
            vectors = reply["data"]["vectors"]
            assert len(vectors) == 2
            assert reply["data"]["dimensions"] == len(vectors[0]) == 384
            assert math.isclose(math.fsum(x * x for x in vectors[0]), 1.0, rel_tol=1e-3)
            assert_declared_result(EmbeddingPipeline, reply["data"])
        body = clients["SM2"].build({"text": "once", "model": "all-minilm-l6-v2"})
        first = httpx2.post(f"{portal.url}/api/embedding", json=body, timeout=60).json()
        replay = httpx2.post(f"{portal.url}/api/embedding", json=body, timeout=60).json()
        assert (first["code"], replay["code"]) == (0, 9804)
