"""The worker admin trusts staff only as far as needed.

Our own worker's address, kind and role come from its registration (the
portal sends prompts and the worker token there): the admin shows them
read-only. A row added in the admin is a remote endpoint, and a remote
endpoint is never a prefill or decode worker.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from registry.models import ServedModel, Worker, WorkerKind
from registry.services.workers import WorkerRegistration, register_worker

pytestmark = pytest.mark.django_db
ADD_URL = "/admin/registry/worker/add/"


def form_data(page: Any, **changes: object) -> dict[str, Any]:
    """What the browser would post back from `page`'s form, with `changes` typed in."""
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data = {name: value for name, value in data.items() if value is not None}
    data.update(changes)
    return data


def local_worker() -> Worker:
    return register_worker(
        registration=WorkerRegistration(
            identity="host@http://127.0.0.1:9001",
            address="http://127.0.0.1:9001",
            model_names=("smol",),
            role="decode",
        )
    )


def test_a_local_workers_address_kind_and_role_are_read_only(admin_client: Client) -> None:
    worker = local_worker()
    url = f"/admin/registry/worker/{worker.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200
    form = page.context["adminform"].form
    assert not {"address", "kind", "role", "identity", "served_models", "remote_api_key"} & set(form.fields)
    assert "http://127.0.0.1:9001" in page.content.decode()  # shown, as text

    posted = form_data(page, address="http://203.0.113.9:1", kind="remote", role="prefill")
    assert admin_client.post(url, posted).status_code == 302
    worker.refresh_from_db()
    assert (worker.address, worker.kind, worker.role) == ("http://127.0.0.1:9001", WorkerKind.LOCAL, "decode")


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_a_remote_endpoint_is_refused_a_prefill_or_decode_role(admin_client: Client, role: str) -> None:
    page = admin_client.get(ADD_URL)
    model = ServedModel.objects.create(name="gpt-x")
    new = {"identity": "remote-a", "address": "https://api.example.test/v1", "served_models": [model.pk]}
    refused = admin_client.post(ADD_URL, form_data(page, **new, role=role))
    assert refused.status_code == 200
    assert "its role is &#x27;both&#x27;" in refused.content.decode()
    assert "role" in refused.context["adminform"].form.errors
    assert not Worker.objects.exists()

    assert admin_client.post(ADD_URL, form_data(page, **new, role="both")).status_code == 302
    remote = Worker.objects.get(identity="remote-a")
    assert (remote.kind, list(remote.served_models.all())) == (WorkerKind.REMOTE, [model])
    change_url = f"/admin/registry/worker/{remote.pk}/change/"
    edit = admin_client.post(change_url, form_data(admin_client.get(change_url), role=role))
    assert edit.status_code == 200
    assert "role" in edit.context["adminform"].form.errors
    remote.refresh_from_db()
    assert remote.role == "both"


def test_a_row_added_in_the_admin_is_a_remote_endpoint_whatever_is_posted(admin_client: Client) -> None:
    page = admin_client.get(ADD_URL)
    assert "kind" not in page.context["adminform"].form.fields
    posted = form_data(page, identity="typed-in", address="http://203.0.113.9:1", kind="local")
    assert admin_client.post(ADD_URL, posted).status_code == 302
    assert Worker.objects.get(identity="typed-in").kind == WorkerKind.REMOTE

    remote = Worker.objects.get(identity="typed-in")
    change_url = f"/admin/registry/worker/{remote.pk}/change/"
    moved = form_data(admin_client.get(change_url), address="https://other.example.test/v1", kind="local")
    assert admin_client.post(change_url, moved).status_code == 302
    remote.refresh_from_db()
    assert (remote.address, remote.kind) == ("https://other.example.test/v1", WorkerKind.REMOTE)


def test_a_registration_takes_over_a_row_as_our_worker_and_drops_its_remote_key() -> None:
    Worker.objects.create(
        identity="host@http://127.0.0.1:9001", kind=WorkerKind.REMOTE, address="https://x.test/v1",
        remote_api_key="rk-old", role="both",
    )  # fmt: skip
    worker = local_worker()
    assert (worker.kind, worker.address, worker.remote_api_key) == ("local", "http://127.0.0.1:9001", "")
