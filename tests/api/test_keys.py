"""API keys: the command, the admin's show-once secret, hashing and the usage admin totals."""

from __future__ import annotations

import hashlib
import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from registry.models import ApiKey, ServedModel, UsageRecord

pytestmark = pytest.mark.django_db


def test_createapikey_prints_the_secret_last_and_stores_only_its_hash():
    ServedModel.objects.create(name="m1")
    out = StringIO()
    call_command(
        "createapikey", "--name", "ci", "--models", "m1", "--expires", "3", stdout=out, stderr=StringIO()
    )
    secret = out.getvalue().strip().splitlines()[-1]
    key = ApiKey.objects.get(name="ci")
    assert secret.startswith(f"sk-{key.prefix}-")
    assert len(key.prefix) == 8
    assert key.hashed_secret == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(ApiKey.objects.values().get())
    assert [m.name for m in key.allowed_models.all()] == ["m1"]
    assert key.expires_at is not None


def test_createapikey_refuses_unknown_models():
    with pytest.raises(CommandError, match="nope"):
        call_command("createapikey", "--name", "x", "--models", "nope", stdout=StringIO(), stderr=StringIO())


@pytest.fixture
def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    client = Client()
    client.force_login(user)
    return client


def test_admin_shows_a_new_keys_secret_once(admin_client):
    form = {"name": "from-admin", "queue_priority": 0}
    response = admin_client.post("/admin/registry/apikey/add/", form, follow=True)
    key = ApiKey.objects.get(name="from-admin")
    shown = [str(m) for m in response.context["messages"] if f"sk-{key.prefix}-" in str(m)]
    assert len(shown) == 1
    found = re.search(r'id="key-secret">([^<]+)</code>', shown[0])
    assert found is not None
    secret = found.group(1)
    assert key.hashed_secret == hashlib.sha256(secret.encode()).hexdigest()
    again = admin_client.get(f"/admin/registry/apikey/{key.id}/change/")
    assert secret not in again.content.decode()


def test_usage_admin_lists_totals_per_key_and_model(admin_client):
    UsageRecord.objects.create(request_id="a", model_name="m1", prompt_tokens=3, completion_tokens=4)
    UsageRecord.objects.create(request_id="b", model_name="m1", prompt_tokens=1, completion_tokens=1)
    page = admin_client.get("/admin/registry/usagerecord/").content.decode()
    assert 'id="usage-totals-per-model"' in page
    assert "<td>m1</td><td>2</td><td>4</td><td>5</td>" in page


def test_a_new_key_is_for_every_model_by_default_and_its_form_has_no_revocation(admin_client):
    form = admin_client.get("/admin/registry/apikey/add/").content.decode()
    assert re.search(r'<input type="checkbox" name="all_models"[^>]* checked', form)
    assert 'name="revoked_at' not in form
    ServedModel.objects.create(name="m1")
    narrow = ApiKey.objects.create(name="narrow", prefix="p1", hashed_secret="h1", requests_per_minute=60)
    narrow.allowed_models.add(ServedModel.objects.get(name="m1"))
    ApiKey.objects.create(name="wide", prefix="p2", hashed_secret="h2", all_models=True)
    listing = admin_client.get("/admin/registry/apikey/").content.decode()
    assert "All models" in listing
    assert '<td class="field-scope">m1</td>' in listing
    assert "Revoked at" not in listing
    edit = admin_client.get(f"/admin/registry/apikey/{narrow.id}/change/").content.decode()
    assert 'name="revoked_at' in edit
    assert "60 req/min" in edit  # the limits are on the key's page, not in the list
