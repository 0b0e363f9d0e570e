"""What a deployment's served names become when it is created or deleted.

A deployment names its models (`ServedModel` rows) before any replica runs,
so that a request for a cold model queues instead of a 404. Deleting it must
not leave those names behind as live models that nothing will ever serve
(requests would wait, then get "503 retry later"): the operator chooses to
keep each name disabled (its aliases, prices and the keys allowed to use it
stay, for a later deployment) or to remove it. Either way its requests get
404 model_not_found at once, on every portal (the registry version is bumped).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models, transaction

from fleet.models import Deployment
from registry.models import ServedModel, Worker


class ServedFate(models.TextChoices):
    DISABLE = "disable", "Keep its served model, disabled (aliases, prices and key scopes stay)"
    REMOVE = "remove", "Remove its served model (with its aliases and key scopes)"


def names_left_behind(deployments: Iterable[Deployment]) -> list[str]:
    """The served names of `deployments` that nothing else serves: no other deployment, no online worker."""
    doomed = list(deployments)
    names = {name for deployment in doomed for name in deployment.served_names}
    others = Deployment.objects.exclude(pk__in=[d.pk for d in doomed])
    names -= {name for deployment in others for name in deployment.served_names}
    online = Worker.objects.online().filter(served_models__name__in=names)
    return sorted(names - set(online.values_list("served_models__name", flat=True)))


@transaction.atomic
def delete_deployments(deployments: Iterable[Deployment], *, fate: str) -> list[str]:
    """Delete the deployments; disable or remove the served names left behind, which are returned."""
    doomed = list(deployments)
    names = names_left_behind(doomed)
    for deployment in doomed:
        deployment.delete()
    # Row by row, not update(): each save or delete is audited and bumps the registry version (signals).
    for model in ServedModel.objects.filter(name__in=names):
        if fate == ServedFate.REMOVE:
            model.delete()
        elif model.enabled:
            model.enabled = False
            model.save(update_fields=["enabled"])
    return names


def enable_served_names(deployment: Deployment) -> None:
    """A new deployment serves its names again, though an earlier one's deletion disabled them."""
    for model in ServedModel.objects.filter(name__in=deployment.served_names, enabled=False):
        model.enabled = True
        model.save(update_fields=["enabled"])
