"""Fixtures for the signed API: an app credential and a way to post signed bodies."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.cache import cache
from django.test import AsyncClient

from portal.signed.client import sign_body
from registry.services.credentials import create_app_credential, forget_cached_credential
from signing import sm2

# go-infer's example app and SM2 key pair (examples/test_api.py, examples/utils/sm2.py).
GO_INFER_APP_ID = "3EA25569454745D01219080B779F021F"
GO_INFER_SECRET = "41DF0E6AE27B5282C07EF5124642A352"
GO_INFER_SM2_PRIVATE_BASE64 = "JShsBOJL0RgPAoPttEB1hgtPAvCikOl0V1oTOYL7k5U="
GO_INFER_SM2_PRIVATE_HEX = "25286c04e24bd1180f0283edb44075860b4f02f0a290e974575a133982fb9395"
GO_INFER_SM2_PUBLIC_HEX = (
    "4f1df6069a086ac4e1d1c4ad60a3ab26a19ba5fc97a45dedf386c7480dcab18f"
    "a745c3a0f6dba6ed6993d0367d9f6b12c06dc01d4079c9eda3f807e21f93edc6"
)


@dataclass
class App:
    app_id: str
    secret: str
    credential_id: int
    sm2_private_key: str

    def body(self, data: dict[str, Any], *, sign_type: str = "SHA256", **fields: Any) -> dict[str, Any]:
        """A signed body for `data`; `fields` override or add top-level keys before signing."""
        body = {
            "appId": self.app_id,
            "version": "1",
            "encType": "plain",
            "timestamp": int(time.time()),
            "data": data,
            **fields,
        }
        return sign_body(body, secret=self.secret, sign_type=sign_type, sm2_private_key=self.sm2_private_key)


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    cache.clear()
    forget_cached_credential()
    yield
    cache.clear()
    forget_cached_credential()


@pytest.fixture
def app(transactional_db: None) -> App:
    private_key = sm2.generate_private_key()
    credential, secret = create_app_credential(
        app_id="app-under-test", sm2_public_key="04" + sm2.public_key_from_private(private_key)
    )
    return App(credential.app_id, secret, credential.pk, private_key)


async def post(
    pipeline: str, body: dict[str, Any] | bytes, content_type: str = "application/json"
) -> dict[str, Any]:
    """POST to the endpoint with Django's async test client; every answer must be HTTP 200 JSON."""
    payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
    response = await AsyncClient().post(f"/api/{pipeline}", data=payload, content_type=content_type)
    assert response.status_code == 200
    return dict(response.json())
