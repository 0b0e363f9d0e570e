"""The Kubernetes backend's lease: of several `runkubeagent` processes, one acts at a time.

It lives on the scheduler's lock row. Taking or renewing it is one UPDATE
(atomic on PostgreSQL and SQLite alike): it succeeds for the holder, or for
anyone once the holder let it lapse, so two agents never both act.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from fleet.models import SchedulerLock


def hold_kube_lease(*, holder: str, seconds: float) -> bool:
    """Take or renew the lease for `seconds`; whether `holder` holds it now."""
    SchedulerLock.objects.get_or_create(pk=1)
    now = timezone.now()
    free = Q(kube_leader=holder) | Q(kube_lease_until__isnull=True) | Q(kube_lease_until__lt=now)
    taken = SchedulerLock.objects.filter(free, pk=1).update(
        kube_leader=holder, kube_lease_until=now + timedelta(seconds=seconds)
    )
    return bool(taken)


def release_kube_lease(*, holder: str) -> None:
    """Let another agent take over at once (on a clean stop)."""
    SchedulerLock.objects.filter(pk=1, kube_leader=holder).update(kube_leader="", kube_lease_until=None)
