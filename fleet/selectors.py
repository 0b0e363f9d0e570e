"""Reads of the fleet that other apps need."""

from __future__ import annotations

from fleet.models import Deployment


def list_on_demand_model_names() -> set[str]:
    """Served names of elastic deployments that start on a request (they are listed while cold)."""
    elastic = Deployment.objects.filter(min_replicas__isnull=False, max_replicas__gt=0)
    return {name for deployment in elastic for name in deployment.served_names}
