"""The audit trail's django-q2 task: prune entries older than AUDIT_RETENTION_DAYS (hourly)."""

from __future__ import annotations

from django.conf import settings

from audit.services import prune_audit as _prune


def prune_audit() -> int:
    return _prune(retention_days=settings.AUDIT_RETENTION_DAYS)
