"""Bump the registry version when an admin edits what the request path caches.

Heartbeats and usage counters write with `update()`, which sends no signal,
so only deliberate changes (models, aliases, keys, credentials) bump it.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from registry.models import ApiKey, AppCredential, ModelAlias, ServedModel
from registry.services.versions import bump_version

CACHED_MODELS = (ServedModel, ModelAlias, ApiKey, AppCredential)


@receiver(post_save)
@receiver(post_delete)
def _registry_row_changed(sender: type, **kwargs: Any) -> None:
    if sender in CACHED_MODELS:
        transaction.on_commit(bump_version)


@receiver(m2m_changed, sender=ApiKey.allowed_models.through)
def _key_models_changed(**kwargs: Any) -> None:
    transaction.on_commit(bump_version)
