"""Roles as Django groups: what each may see and change, so that the admin, the console, its websocket
and the CSV exports honour them through ordinary permissions.

- viewer: the console and usage, read-only (the fleet, models, usage, audit).
- operator: a viewer who also changes deployments, nodes, workers, models and aliases.
- key manager: the API keys and app credentials of their own teams (`TeamScopedAdmin`).
- admin: every permission, every team's keys (`teams.manage_every_team`).

The groups are made (and their permissions set) after every `migrate`; a
superuser needs no group. SSO maps a provider's groups onto these names.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.db.models import Q

VIEWER, OPERATOR, KEY_MANAGER, ADMIN = "viewer", "operator", "key manager", "admin"
ROLES = (VIEWER, OPERATOR, KEY_MANAGER, ADMIN)
# The console's own gate: the dashboard, its fleet figures and its live websocket.
CONSOLE_PERMISSION = "registry.view_worker"
EVERY_TEAM = "teams.manage_every_team"

_SEEN = [
    ("registry", "servedmodel"), ("registry", "modelalias"), ("registry", "worker"),
    ("registry", "usagerecord"), ("registry", "usagedaily"), ("fleet", "deployment"), ("fleet", "node"),
    ("fleet", "instance"), ("fleet", "deploymentevent"), ("teams", "team"), ("audit", "auditentry"),
]  # fmt: skip
_OPERATED = [
    ("registry", "servedmodel"), ("registry", "modelalias"), ("registry", "worker"),
    ("fleet", "deployment"), ("fleet", "node"),
]  # fmt: skip
_KEYS = [("registry", "apikey"), ("registry", "appcredential")]


def _codes(models: list[tuple[str, str]], actions: tuple[str, ...]) -> Q:
    query = Q(pk__in=[])
    for app, model in models:
        query |= Q(content_type__app_label=app, codename__in=[f"{a}_{model}" for a in actions])
    return query


def role_permissions(role: str) -> Q:
    """The permissions of `role` as a query over Permission."""
    seen = _codes(_SEEN, ("view",))
    if role == VIEWER:
        return seen
    if role == OPERATOR:
        return seen | _codes(_OPERATED, ("add", "change", "delete"))
    if role == KEY_MANAGER:
        return _codes(_KEYS, ("view", "add", "change")) | _codes([("teams", "team")], ("view",))
    return Q()  # admin: every permission


def ensure_roles(app_config: Any = None, **kwargs: Any) -> None:
    """Create the role groups and set their permissions (after every migrate; safe to run again).

    Connected to post_migrate, it acts once, for the last app, when every app's permissions exist.
    """
    if app_config is not None and app_config.label != list(apps.get_app_configs())[-1].label:
        return
    for role in ROLES:
        group, _ = Group.objects.get_or_create(name=role)
        chosen = (
            Permission.objects.all() if role == ADMIN else Permission.objects.filter(role_permissions(role))
        )
        group.permissions.set(chosen)
