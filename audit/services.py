"""Write audit entries, and prune the old ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.db import models
from django.utils import timezone

from audit.context import Acting, current, paused
from audit.models import AuditEntry
from audit.snapshots import changes, label, snapshot

PRUNE_BATCH = 5000


@contextlib.contextmanager
def recorded(action: str, instance: models.Model) -> Iterator[None]:
    """Record `action` on `instance` (when someone acts): the row before, and re-read after.

    For changes that `update()` rows (no signal) or save them in several
    steps: the saves inside are not recorded on their own.
    """
    acting = current()
    if acting is None:
        yield
        return
    model, before = type(instance), snapshot(instance)
    with paused():
        yield
    row = model._default_manager.filter(pk=instance.pk).first()
    old, new = changes(before, None if row is None else snapshot(row))
    record(
        acting,
        action=action,
        model=model,
        object_id=instance.pk,
        object_repr=str(instance),
        before=old,
        after=new,
    )


def record(
    acting: Acting,
    *,
    action: str,
    model: type[models.Model],
    object_id: Any,
    object_repr: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> AuditEntry:
    actor_id, actor_name = acting.actor()
    return AuditEntry.objects.create(
        actor_id=actor_id,
        actor_name=actor_name[:200],
        source=acting.source,
        action=action[:64],
        object_type=label(model),
        object_id="" if object_id is None else str(object_id)[:64],
        object_repr=object_repr[:200],
        before=before,
        after=after,
    )


def prune_audit(*, retention_days: int) -> int:
    """Delete entries older than `retention_days` (0: keep every entry), in batches; return how many."""
    if retention_days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=retention_days)
    deleted = 0
    while True:
        ids = list(AuditEntry.objects.filter(at__lt=cutoff).values_list("id", flat=True)[:PRUNE_BATCH])
        if not ids:
            return deleted
        deleted += AuditEntry.objects.filter(id__in=ids).delete()[0]
