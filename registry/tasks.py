"""django-q2 tasks of the registry and the schedules that run them.

The schedule is created by `manage.py setup_schedules` (idempotent; run it
once per deployment, e.g. in the start script after `migrate`). A data
migration would also work, but would tie the schema history to django-q's
tables; a command is easier to re-run and to read.
"""

from __future__ import annotations

from dataclasses import asdict

from django.conf import settings

from registry.services import request_log, rollups
from registry.services.workers import expire_stale_workers as _expire_stale_workers

# (name, dotted function, minutes between runs). Other areas append theirs.
SCHEDULES: list[tuple[str, str, int]] = [
    ("registry: expire stale workers", "registry.tasks.expire_stale_workers", 1),
    ("gateway: probe remote endpoints", "registry.tasks.probe_remote_endpoints", 1),
    ("signed: sweep seen signatures", "portal.signed.replay.sweep_seen_signatures", 10),
    ("usage: roll up per day", "registry.tasks.roll_up_usage", 10),
    ("usage: prune rolled-up records", "registry.tasks.prune_usage", 60),
    ("audit: prune old entries", "audit.tasks.prune_audit", 60),
    ("usage: prune expired request logs", "registry.tasks.prune_request_logs", 60),
]


def expire_stale_workers() -> int:
    """Mark workers whose heartbeat expired offline (run by qcluster every minute)."""
    return _expire_stale_workers()


def probe_remote_endpoints() -> int:
    """Probe remote OpenAI-compatible endpoints: online while they answer (run every minute)."""
    from registry.services.remote import probe_remote_endpoints as _probe

    return _probe()


def roll_up_usage() -> dict[str, int]:
    """Bring the per-day usage rollup up to date (every 10 minutes; a second run changes nothing)."""
    return asdict(rollups.roll_up_usage())


def prune_usage() -> int:
    """Delete raw usage older than USAGE_RETENTION_DAYS that a final rollup holds (hourly)."""
    return rollups.prune_usage(retention_days=settings.USAGE_RETENTION_DAYS)


def prune_request_logs() -> int:
    """Delete request logs (opt-in bodies) whose team's or key's days are over (hourly)."""
    return request_log.prune_request_logs()


def ensure_schedules() -> int:
    """Create or update every schedule in SCHEDULES; return how many there are."""
    from django_q.models import Schedule

    for name, func, minutes in SCHEDULES:
        Schedule.objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes, "repeats": -1},
        )
    return len(SCHEDULES)
