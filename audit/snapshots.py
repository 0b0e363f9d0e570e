"""A row as the audit trail keeps it: its fields as JSON, secrets replaced by a mark."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db import models

# Fields whose values are never stored: only whether they changed.
SECRET_FIELDS = frozenset({"hashed_secret", "secret_ciphertext", "remote_api_key", "password"})
SECRET_MARK = "(secret)"
# Rows an operator changes on purpose; the others (usage, heartbeats, queues) are nobody's doing.
AUDITED = frozenset(
    {
        "registry.servedmodel", "registry.modelalias", "registry.worker", "registry.apikey",
        "registry.appcredential", "fleet.node", "fleet.deployment", "teams.team", "auth.user", "auth.group",
    }
)  # fmt: skip


def label(model: type[models.Model]) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


def audited(model: type[models.Model]) -> bool:
    return label(model) in AUDITED


def is_secret(name: str) -> bool:
    return name in SECRET_FIELDS or "secret" in name or "password" in name


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict | list | str | int | float | bool) or value is None:
        return value
    return str(value)


def snapshot(instance: models.Model) -> dict[str, Any]:
    """The row's concrete fields (a foreign key as its id); a secret as SECRET_MARK when set."""
    fields: dict[str, Any] = {}
    for field in instance._meta.concrete_fields:
        value = getattr(instance, field.attname)
        if is_secret(field.name):
            fields[field.name] = SECRET_MARK if value else ""
        else:
            fields[field.name] = _json(value)
    return fields


def changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[dict | None, dict | None]:
    """Only the fields that differ (all of them for a create or a delete)."""
    if before is None or after is None:
        return before, after
    names = [n for n in after if before.get(n) != after.get(n)]
    return {n: before.get(n) for n in names}, {n: after[n] for n in names}


def changed_secrets(old: models.Model, new: models.Model) -> list[str]:
    """The secrets whose values differ between two versions of a row (named, never shown)."""
    return [
        f.name
        for f in new._meta.concrete_fields
        if is_secret(f.name) and getattr(old, f.attname) != getattr(new, f.attname)
    ]
