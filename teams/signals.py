"""Bump the registry version when a team changes: cached keys, credentials and chat users carry it."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from registry.services.versions import bump_version
from teams.models import Team


@receiver(post_save, sender=Team)
@receiver(post_delete, sender=Team)
@receiver(m2m_changed, sender=Team.members.through)
@receiver(m2m_changed, sender=Team.allowed_models.through)
def _team_changed(**kwargs: Any) -> None:
    transaction.on_commit(bump_version)
