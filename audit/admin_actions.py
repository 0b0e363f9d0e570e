"""Every admin action on an audited model (drain, resume, remove, enable, disable, restart, stop, delete)
records one entry per row it touched, with the row before and after (re-read: actions often `update()`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.context import current, paused
from audit.services import record
from audit.snapshots import audited, changes, snapshot

Action = Callable[..., Any]


def _audited(func: Action, name: str) -> Action:
    def run(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> Any:
        acting = current()
        if acting is None:
            return func(modeladmin, request, queryset)
        rows = {row.pk: (str(row), snapshot(row)) for row in queryset}
        with paused():
            result = func(modeladmin, request, queryset)
        model = queryset.model
        after = {row.pk: snapshot(row) for row in model._default_manager.filter(pk__in=list(rows))}
        for pk, (shown, before) in rows.items():
            old, new = changes(before, after.get(pk))
            if pk in after and not new:
                continue  # unchanged (a confirmation page, an action with nothing to do)
            record(acting, action=name, model=model, object_id=pk, object_repr=shown, before=old, after=new)
        return result

    run.__name__ = getattr(func, "__name__", name)
    for attr in ("short_description", "allowed_permissions"):
        if hasattr(func, attr):
            setattr(run, attr, getattr(func, attr))
    return run


def audit_every_action(site: admin.AdminSite = admin.site) -> None:
    """Wrap the actions of every audited model's admin (the admin registered its models already)."""
    for model, model_admin in site._registry.items():
        if not audited(model):
            continue
        original = model_admin.get_actions

        def get_actions(request: HttpRequest, original: Callable[..., Any] = original) -> dict[str, Any]:
            return {
                name: (_audited(func, name), action_name, description)
                for name, (func, action_name, description) in original(request).items()
            }

        model_admin.get_actions = get_actions  # type: ignore[method-assign]
