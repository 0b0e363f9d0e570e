"""App credentials: encrypted at rest, created from the command line and the admin."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from registry.models import AppCredential
from registry.services.credentials import (
    create_app_credential,
    decrypt_secret,
    forget_cached_credential,
    snapshot_of,
)
from tests.signed.conftest import GO_INFER_SM2_PUBLIC_HEX

pytestmark = pytest.mark.django_db


def test_secret_is_encrypted_at_rest_and_decrypts() -> None:
    credential, secret = create_app_credential(app_id="enc", secret="41DF0E6AE27B5282C07EF5124642A352")

    stored = AppCredential.objects.get(pk=credential.pk).secret_ciphertext
    assert secret not in stored
    assert decrypt_secret(stored) == secret


def test_snapshot_repr_never_shows_the_secret() -> None:
    credential, secret = create_app_credential(app_id="repr")

    snapshot = snapshot_of(credential)

    assert snapshot is not None
    assert snapshot.secret == secret
    assert secret not in repr(snapshot)


def test_old_secret_key_in_fallbacks_still_opens_secrets(settings) -> None:
    credential, secret = create_app_credential(app_id="rotate")
    old_key = settings.SECRET_KEY

    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-new-secret-key", [old_key]
    assert decrypt_secret(credential.secret_ciphertext) == secret

    settings.SECRET_KEY_FALLBACKS = []
    assert snapshot_of(credential) is None  # unreadable: the app is refused, not crashed


def test_command_generates_and_prints_secret_once() -> None:
    out = StringIO()

    call_command("createappcredential", "--app-id", "cli-app", "--allow-plain", stdout=out)

    match = re.search(r"secret: ([0-9A-F]{32})\n", out.getvalue())
    assert match is not None
    credential = AppCredential.objects.get(app_id="cli-app")
    assert credential.allow_plain is True
    assert decrypt_secret(credential.secret_ciphertext) == match.group(1)


def test_command_stores_given_secret_and_normalised_sm2_key() -> None:
    out = StringIO()

    call_command(
        "createappcredential",
        "--app-id=cli-sm2",
        "--secret=given-secret-1234",
        f"--sm2-public-key=04{GO_INFER_SM2_PUBLIC_HEX.upper()}",
        "--pipeline=chat",
        "--rpm=10",
        stdout=out,
    )

    credential = AppCredential.objects.get(app_id="cli-sm2")
    assert "given-secret-1234" not in out.getvalue()
    assert decrypt_secret(credential.secret_ciphertext) == "given-secret-1234"
    assert credential.sm2_public_key == GO_INFER_SM2_PUBLIC_HEX
    assert credential.allowed_pipelines == ["chat"]
    assert credential.requests_per_minute == 10


def test_command_refuses_bad_key_and_duplicate_app() -> None:
    with pytest.raises(CommandError, match="SM2 public key"):
        call_command("createappcredential", "--app-id=bad", "--sm2-public-key=04abcd", stdout=StringIO())
    call_command("createappcredential", "--app-id=dup", stdout=StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("createappcredential", "--app-id=dup", stdout=StringIO())


@pytest.mark.parametrize("app_id", ["has space", "a/b", "x" * 129, "émoji"])
def test_command_and_admin_refuse_an_app_id_the_signed_api_would_refuse(admin_client, app_id) -> None:
    with pytest.raises(CommandError, match="an appId is"):
        call_command("createappcredential", f"--app-id={app_id}", stdout=StringIO())
    response = admin_client.post(
        reverse("admin:registry_appcredential_add"),
        {"app_id": app_id, "allowed_pipelines": "[]", "enabled": "on"},
    )
    assert response.status_code == 200  # the form again, with the error
    assert response.context["adminform"].form.errors["app_id"]
    assert not AppCredential.objects.exists()


def test_admin_add_shows_generated_secret_once_then_masked(admin_client) -> None:
    response = admin_client.post(
        reverse("admin:registry_appcredential_add"),
        {"app_id": "admin-app", "name": "From admin", "allowed_pipelines": "[]", "enabled": "on"},
        follow=True,
    )

    credential = AppCredential.objects.get(app_id="admin-app")
    secret = decrypt_secret(credential.secret_ciphertext)
    assert re.fullmatch(r"[0-9A-F]{32}", secret)
    assert secret in response.content.decode()
    change = admin_client.get(reverse("admin:registry_appcredential_change", args=[credential.pk]))
    page = change.content.decode()
    assert secret not in page
    assert f"{secret[:4]}…{secret[-4:]}" in page
    listing = admin_client.get(reverse("admin:registry_appcredential_changelist")).content.decode()
    assert secret not in listing


def test_admin_regenerate_replaces_secret(admin_client) -> None:
    credential, old_secret = create_app_credential(app_id="regen")
    forget_cached_credential()

    admin_client.post(
        reverse("admin:registry_appcredential_change", args=[credential.pk]),
        {"app_id": "regen", "allowed_pipelines": "[]", "enabled": "on", "regenerate_secret": "on"},
    )

    credential.refresh_from_db()
    assert decrypt_secret(credential.secret_ciphertext) != old_secret
