"""Record the changes made while someone acts (`audit.context`): saves, deletes, many-to-many edits."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from audit.context import current
from audit.services import record
from audit.snapshots import SECRET_MARK, audited, changed_secrets, changes, snapshot

# Saves that are bookkeeping, not a change: a login's last_login.
QUIET_UPDATES = frozenset({"last_login"})


@receiver(pre_save)
def _before_save(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if current() is None or not audited(sender) or instance.pk is None:
        return
    old = sender._default_manager.filter(pk=instance.pk).first()
    instance._audit_before = None if old is None else snapshot(old)  # type: ignore[attr-defined]
    instance._audit_secrets = [] if old is None else changed_secrets(old, instance)  # type: ignore[attr-defined]


@receiver(post_save)
def _after_save(sender: type[models.Model], instance: models.Model, created: bool, **kwargs: Any) -> None:
    acting = current()
    if acting is None or not audited(sender):
        return
    update_fields = kwargs.get("update_fields")
    if update_fields and set(update_fields) <= QUIET_UPDATES:
        return
    full_before = None if created else getattr(instance, "_audit_before", None)
    before, after = changes(full_before, snapshot(instance))
    for name in getattr(instance, "_audit_secrets", []):
        before = {**(before or {}), name: SECRET_MARK}
        after = {**(after or {}), name: f"{SECRET_MARK} changed"}
    if not created and not after:
        return  # saved unchanged
    action = "create" if created or full_before is None else "change"
    record(acting, action=action, model=sender, object_id=instance.pk, object_repr=str(instance),
           before=before, after=after)  # fmt: skip


@receiver(pre_delete)
def _before_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if current() is not None and audited(sender):
        instance._audit_before = snapshot(instance)  # type: ignore[attr-defined]


@receiver(post_delete)
def _after_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    acting = current()
    if acting is None or not audited(sender):
        return
    before = getattr(instance, "_audit_before", None) or snapshot(instance)
    record(acting, action="delete", model=sender, object_id=instance.pk, object_repr=str(instance),
           before=before, after=None)  # fmt: skip


@receiver(m2m_changed)
def _relation_changed(sender: Any, instance: models.Model, action: str, **kwargs: Any) -> None:
    """A many-to-many field of an audited row (a key's models, a team's members): its ids before and after."""
    acting = current()
    if acting is None or not audited(type(instance)) or kwargs.get("reverse"):
        return
    field = next(
        (f for f in type(instance)._meta.many_to_many if getattr(type(instance), f.name).through is sender),
        None,
    )
    if field is None:
        return
    ids = sorted(getattr(instance, field.name).values_list("pk", flat=True))
    if action.startswith("pre_"):
        instance._audit_m2m = ids  # type: ignore[attr-defined]
        return
    before = getattr(instance, "_audit_m2m", None)
    if before == ids:
        return
    record(acting, action="change", model=type(instance), object_id=instance.pk, object_repr=str(instance),
           before={field.name: before}, after={field.name: ids})  # fmt: skip
