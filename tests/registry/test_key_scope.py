"""An API key's model scope is explicit, and its limits are set where keys and apps are made."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from registry.models import ApiKey, AppCredential, ServedModel
from registry.services.keys import create_api_key, get_key_info

BEFORE, AFTER = [("registry", "0001_initial")], [("registry", "0002_key_scope_and_limits")]


@pytest.mark.django_db(transaction=True)
def test_migration_gives_keys_without_models_all_models_and_keeps_the_others_lists():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    model = old.get_model("registry", "ServedModel").objects.create(name="m1")
    keys = old.get_model("registry", "ApiKey").objects
    keys.create(name="open", prefix="p-open", hashed_secret="h-open")
    keys.create(name="scoped", prefix="p-scoped", hashed_secret="h-scoped").allowed_models.add(model)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())  # whatever else was unapplied with 0002

    assert ApiKey.objects.get(name="open").all_models
    scoped = ApiKey.objects.get(name="scoped")
    assert not scoped.all_models
    ServedModel.objects.filter(name="m1").delete()
    assert get_key_info(hashed="h-scoped").allowed_model_ids == frozenset()  # type: ignore[union-attr]
    assert get_key_info(hashed="h-open").allowed_model_ids is None  # type: ignore[union-attr]


@pytest.mark.django_db
def test_a_key_made_without_models_is_for_all_models_explicitly():
    key, _ = create_api_key(name="all")
    assert key.all_models
    ServedModel.objects.create(name="m1")
    scoped, _ = create_api_key(name="one", model_names=["m1"])
    assert not scoped.all_models
    with pytest.raises(ValueError, match="not both"):
        create_api_key(name="both", model_names=["m1"], all_models=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_createapikey_sets_scope_and_limits():
    ServedModel.objects.create(name="m1")
    run("createapikey", "--name", "wide", "--all-models", "--max-in-flight", "3", "--tpm", "1000")
    run("createapikey", "--name", "narrow", "--models", "m1")
    wide, narrow = ApiKey.objects.get(name="wide"), ApiKey.objects.get(name="narrow")
    assert (wide.all_models, wide.max_in_flight, wide.tokens_per_minute) == (True, 3, 1000)
    assert (narrow.all_models, [m.name for m in narrow.allowed_models.all()]) == (False, ["m1"])
    with pytest.raises(CommandError):
        run("createapikey", "--name", "x", "--all-models", "--models", "m1")
    with pytest.raises(CommandError, match="max-in-flight"):
        run("createapikey", "--name", "x", "--max-in-flight", "0")


@pytest.mark.django_db
def test_createappcredential_sets_token_and_in_flight_limits():
    run("createappcredential", "--app-id", "limited", "--tpm", "5000", "--max-in-flight", "2")
    app = AppCredential.objects.get(app_id="limited")
    assert (app.tokens_per_minute, app.max_in_flight) == (5000, 2)


@pytest.mark.django_db
def test_admin_shows_the_new_limits(admin_client):
    key_form = admin_client.get("/admin/registry/apikey/add/").content.decode()
    app_form = admin_client.get("/admin/registry/appcredential/add/").content.decode()
    assert 'name="all_models"' in key_form
    assert 'name="max_in_flight"' in key_form
    assert 'name="tokens_per_minute"' in app_form
    assert 'name="max_in_flight"' in app_form
