"""The endpoint as a DRF view: its authentication classes decide which signTypes it accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import AsyncClient
from django.urls import path
from rest_framework.authentication import BasicAuthentication
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from portal.gateway.gateway import current
from portal.signed.policies import (
    PlainSignature,
    Sha256Signature,
    Sm2Signature,
    signature_policies,
)
from portal.signed.views import SignedView
from registry.models import AppCredential
from registry.services.credentials import forget_cached_credential
from tests.signed.conftest import App, post

pytestmark = pytest.mark.django_db(transaction=True)


class Sha256OnlyView(SignedView):
    authentication_classes = [Sha256Signature]


# A URLconf (this module, through the `urls` mark) that mounts the endpoint with SHA256 alone.
urlpatterns = [path("api/<str:pipeline>", Sha256OnlyView.as_view())]


@pytest.fixture(autouse=True)
def _pipelines(settings) -> None:
    settings.SIGNED_PIPELINES = [
        "portal.signed.pipelines.echo.EchoPipeline",
        "portal.signed.pipelines.chat.ChatPipeline",
    ]


@pytest.fixture(autouse=True)
async def _usage_written() -> AsyncIterator[None]:
    yield
    await current().usage.flush()  # echo writes usage in the background


def test_the_endpoint_is_a_drf_view_accepting_sha256_sm2_and_plain() -> None:
    view = SignedView()

    assert [p.sign_type for p in signature_policies(view.get_authenticators())] == ["SHA256", "SM2", "plain"]


@pytest.mark.urls(__name__)
async def test_a_view_without_sm2_in_its_authentication_classes_refuses_sm2_with_9803(app: App) -> None:
    sm2 = await post("echo", app.body({"text": "hi"}, sign_type="SM2"))
    sha256 = await post("echo", app.body({"text": "hi"}))

    assert sm2["code"] == 9803
    assert "accepted: SHA256" in sm2["data"]["msg"]
    assert sha256["code"] == 0


@pytest.mark.urls(__name__)
async def test_a_view_without_plain_refuses_plain_even_for_an_app_allowed_it(app: App) -> None:
    await AppCredential.objects.filter(pk=app.credential_id).aupdate(allow_plain=True)
    forget_cached_credential()

    assert (await post("echo", app.body({}, sign_type="plain")))["code"] == 9803


async def test_the_default_view_accepts_the_same_sm2_request(app: App) -> None:
    assert (await post("echo", app.body({"text": "hi"}, sign_type="SM2")))["code"] == 0


@pytest.mark.parametrize("method", ["get", "put", "delete", "options"])
async def test_methods_other_than_post_are_405(method: str) -> None:
    response = await getattr(AsyncClient(), method)("/api/echo")

    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_drfs_sync_authenticate_hook_never_passes_a_request() -> None:
    # The signature is in the body: only the view's async path verifies it.
    request = Request(APIRequestFactory().post("/api/echo", {}, format="json"))  # as DRF passes it
    for policy in (Sha256Signature(), Sm2Signature(), PlainSignature()):
        with pytest.raises(NotImplementedError):
            policy.authenticate(request)


@pytest.mark.parametrize(
    "classes",
    [[Sha256Signature, BasicAuthentication], [Sha256Signature, Sha256Signature]],
    ids=["not-a-signature", "duplicate"],
)
def test_a_view_whose_authentication_classes_are_not_one_policy_per_sign_type_is_refused(classes) -> None:
    with pytest.raises(ImproperlyConfigured):
        signature_policies([cls() for cls in classes])
