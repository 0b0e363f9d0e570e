"""The deployment admin: saving places replicas, options are checked, restart and stop, bounded pages."""

from __future__ import annotations

import pytest

from fleet.models import Deployment, Instance, InstanceState, Node
from tests.fleet.conftest import ADD, FORM

pytestmark = pytest.mark.django_db


def test_adding_a_deployment_places_its_replicas_at_once(staff, node):
    response = staff.post(ADD, {**FORM, "name": "echo", "model_path": "canned", "extra_args": ""})
    assert response.status_code == 302, response.content.decode()[-3000:]
    deployment = Deployment.objects.get(name="echo")
    assert deployment.instances.filter(node=node, wanted=True).count() == 2


def test_the_form_offers_the_nodes_catalogue_and_refuses_bad_extra_options(staff, node):
    Node.objects.filter(pk=node.pk).update(available_memory_bytes=3 * 2**30)
    page = staff.get(ADD).content.decode()
    qwen = page.split('<tr data-path="/models/qwen.gguf">')[1].split("</tr>")[0]
    cells = [c.split(">", 1)[1].split("</td")[0] for c in qwen.split("<td")[1:]]
    # A replica needs its runtime (768 MiB) and twice its weights: 2.8 GiB of the node's 3.0 GiB free.
    assert cells[1:6] == ["GGUF", "1.0 GiB", "2.8 GiB", "node-a", "yes: node-a"]
    assert '<button type="button" class="catalogue-use" data-path="/models/qwen.gguf">Use</button>' in qwen
    assert "packaged GGUF" in page
    response = staff.post(ADD, {**FORM, "name": "bad", "model_path": "canned", "extra_args": "--port 1"})
    assert response.status_code == 200
    assert "--port is set by the deployment" in response.content.decode()
    assert not Deployment.objects.filter(name="bad").exists()


def test_restart_and_stop_actions(staff, node):
    staff.post(ADD, {**FORM, "name": "echo", "model_path": "canned", "extra_args": ""})
    deployment = Deployment.objects.get(name="echo")
    Instance.objects.update(state=InstanceState.READY)
    changelist = "/admin/fleet/deployment/"
    staff.post(changelist, {"action": "restart", "_selected_action": [deployment.pk]})
    deployment.refresh_from_db()
    assert deployment.generation == 2
    assert deployment.instances.filter(generation=2).count() == 1  # one at a time
    staff.post(changelist, {"action": "stop", "_selected_action": [deployment.pk]})
    assert not deployment.instances.filter(wanted=True).exists()


def test_a_deployment_with_replicas_left_cannot_be_deleted_and_the_page_says_why(staff, node):
    staff.post(ADD, {**FORM, "name": "echo", "model_path": "canned", "extra_args": ""})
    deployment = Deployment.objects.get(name="echo")
    page = staff.get(f"/admin/fleet/deployment/{deployment.pk}/delete/", follow=True)
    assert page.redirect_chain[-1][0] == f"/admin/fleet/deployment/{deployment.pk}/change/"
    said = [str(m) for m in page.context["messages"]]
    assert said[-1:] == [
        "“echo” still running: stop it first (the Stop action scales it to 0 and its workers drain), "
        "then delete it once its replicas are gone."
    ]
    delete = {"action": "delete_selected", "_selected_action": [deployment.pk]}
    bulk = staff.post("/admin/fleet/deployment/", delete, follow=True)
    text = bulk.content.decode()
    assert "stop it first" in text
    assert "permission" not in text
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    Instance.objects.filter(deployment=deployment).delete()  # its agents stopped every replica
    confirm = staff.post("/admin/fleet/deployment/", delete)
    assert "Are you sure" in confirm.content.decode()


@pytest.mark.parametrize("replicas", [2, 40])
def test_the_change_page_renders_in_a_bounded_number_of_queries(
    staff, node, replicas, django_assert_max_num_queries
):
    deployment = Deployment.objects.create(name="echo", model_path="canned", replicas=replicas)
    Instance.objects.bulk_create(
        [Instance(deployment=deployment, node=node, generation=1, log_tail="boom") for _ in range(replicas)]
    )
    with django_assert_max_num_queries(12):
        page = staff.get(f"/admin/fleet/deployment/{deployment.pk}/change/")
    assert page.status_code == 200
    assert page.content.decode().count("<pre") == replicas


def test_labels_are_key_value_rows_stored_as_json_and_bad_pairs_are_refused(staff, node):
    rows = {"required_labels_key": ["zone", "gpu", ""], "required_labels_value": ["a", "a100", ""]}
    form = {**FORM, "name": "echo", "model_path": "canned", "extra_args": ""}
    del form["required_labels"]
    assert staff.post(ADD, {**form, **rows}).status_code == 302
    deployment = Deployment.objects.get(name="echo")
    assert deployment.required_labels == {"zone": "a", "gpu": "a100"}
    page = staff.get(f"/admin/fleet/deployment/{deployment.pk}/change/").content.decode()
    assert 'name="required_labels_key" value="gpu"' in page
    assert 'name="required_labels_value" value="a100"' in page
    for keys, values, said in (
        (["", "x"], ["a", ""], "The value &#x27;a&#x27; has no key."),
        (["zone", "zone"], ["a", "b"], "The key &#x27;zone&#x27; is given twice."),
        (["zo ne"], ["a"], "&#x27;zo ne&#x27; is not a label key"),
        (["zone"], ["a,b"], "cannot hold a comma"),
    ):
        bad = {"required_labels_key": keys, "required_labels_value": values}
        response = staff.post(ADD, {**form, "name": "bad", **bad})
        assert response.status_code == 200
        assert said in response.content.decode()
    assert not Deployment.objects.filter(name="bad").exists()


def test_a_canned_replica_books_little_memory(staff, node):
    form = {**FORM, "name": "echo", "model_path": "canned", "extra_args": "", "memory_per_replica": ""}
    assert staff.post(ADD, form).status_code == 302
    booked = set(Instance.objects.values_list("memory_bytes", flat=True))
    assert booked == {256 * 2**20}  # not the 2 GiB of unknown weights and their margin (4.75 GiB)
