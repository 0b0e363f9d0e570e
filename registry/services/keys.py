"""API keys: created with a secret shown once, stored as a sha256 hash, looked up through a short cache.

A secret looks like `sk-<prefix8>-<random>`; the prefix is stored in clear so that
an operator can tell keys apart. Revocation and expiry take effect within
`settings.API_KEY_CACHE_SECONDS`, the lifetime of a cached lookup.

A key's model scope is explicit: `all_models`, or the models it lists. A key
that lists none and is not `all_models` may use nothing; deleting a model
takes it off the lists and never widens a key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from registry.models import ApiKey, ServedModel
from registry.services.cache import RefreshingCache
from registry.services.request_log import log_days
from teams.budgets import BudgetLimits, budget_of, narrow, team_budget, team_model_ids
from teams.models import Team

# Lookups kept per process: enough for every live key; random secrets only evict the oldest.
KEY_CACHE_ENTRIES = 10_000
# Our secrets are 55 characters; a longer one cannot open anything and is not hashed.
MAX_SECRET_LENGTH = 200


class KeyRejected(Exception):
    """The presented secret opens nothing: missing, unknown, revoked or expired."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class KeyInfo:
    """What the gateway needs of a key; never carries the secret or its hash."""

    id: int
    prefix: str
    name: str
    expires_at: datetime | None
    revoked: bool
    allowed_model_ids: frozenset[int] | None  # None: every model
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_in_flight: int | None = None
    queue_priority: int = 0
    max_queued: int | None = None
    team_id: int | None = None
    budgets: tuple[BudgetLimits, ...] = ()  # its team's, then its own
    log_days: int = 0  # its requests' bodies are kept this long (its own or its team's request log); 0: not

    def allows(self, served_model_id: int) -> bool:
        return self.allowed_model_ids is None or served_model_id in self.allowed_model_ids


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_secret() -> tuple[str, str]:
    """A new (prefix, secret) pair."""
    prefix = secrets.token_hex(4)
    return prefix, f"sk-{prefix}-{secrets.token_urlsafe(32)}"


def assign_secret(*, key: ApiKey) -> str:
    """Give an unsaved key a fresh secret; return the secret, which is not stored anywhere."""
    key.prefix, secret = generate_secret()
    key.hashed_secret = hash_secret(secret)
    return secret


@transaction.atomic
def create_api_key(
    *,
    name: str,
    model_names: Iterable[str] = (),
    expires_in_days: float | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_in_flight: int | None = None,
    all_models: bool | None = None,
    owner_id: int | None = None,
    team: Team | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret (shown once); unknown model names raise ValueError.

    `all_models` defaults to "no model named": the scope is stored explicitly either way.
    """
    names = [n for n in model_names if n]
    if all_models and names:
        raise ValueError("A key allows all models or the models it names, not both.")
    models = list(ServedModel.objects.filter(name__in=names))
    missing = sorted(set(names) - {m.name for m in models})
    if missing:
        raise ValueError(f"Unknown served model(s): {', '.join(missing)}")
    key = ApiKey(
        name=name,
        owner_id=owner_id,
        team=team,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        max_in_flight=max_in_flight,
        all_models=not names if all_models is None else all_models,
        expires_at=timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    secret = assign_secret(key=key)
    key.save()
    key.allowed_models.set(models)
    return key, secret


def get_key_info(*, hashed: str) -> KeyInfo | None:
    """The key whose hash is `hashed`, compared in constant time; None when there is none."""
    key = (
        ApiKey.objects.filter(hashed_secret=hashed)
        .select_related("team")
        .prefetch_related("allowed_models")
        .first()
    )
    if key is None or not hmac.compare_digest(key.hashed_secret, hashed):
        return None
    own = None if key.all_models else frozenset(m.id for m in key.allowed_models.all())
    allowed = narrow(own, team_model_ids(key.team))
    budgets = team_budget(key.team) + budget_of(
        subject=f"key:{key.id}",
        label=f"API key '{key.name}'",
        daily=key.daily_tokens,
        monthly=key.monthly_tokens,
        usd=key.monthly_budget_usd,
    )
    return KeyInfo(
        id=key.id,
        prefix=key.prefix,
        name=key.name,
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        allowed_model_ids=allowed,
        requests_per_minute=key.requests_per_minute,
        tokens_per_minute=key.tokens_per_minute,
        max_in_flight=key.max_in_flight,
        queue_priority=key.queue_priority,
        max_queued=key.max_queued,
        team_id=key.team_id,
        budgets=budgets,
        log_days=log_days(key, key.team),
    )


async def _load_key(hashed: Hashable) -> KeyInfo | None:
    return await database_sync_to_async(get_key_info)(hashed=str(hashed))


# Revocation reaches the hot path within a second through the registry version
# (an admin change bumps it), and within API_KEY_CACHE_SECONDS in any case.
_cache: RefreshingCache[KeyInfo | None] = RefreshingCache(
    _load_key,
    ttl=lambda: settings.API_KEY_CACHE_SECONDS,
    max_stale=lambda: 3 * settings.API_KEY_CACHE_SECONDS,
    max_entries=KEY_CACHE_ENTRIES,
)


async def aauthenticate_secret(secret: str) -> KeyInfo:
    """The live key for `secret`, or KeyRejected saying why (messages never echo the secret)."""
    if not secret.startswith("sk-") or len(secret) > MAX_SECRET_LENGTH:
        raise KeyRejected("Invalid API key.", code="invalid_api_key")
    info = await _cache.get(hash_secret(secret))
    if info is None:
        raise KeyRejected("Invalid API key.", code="invalid_api_key")
    if info.revoked:
        raise KeyRejected("This API key has been revoked.", code="revoked_api_key")
    if info.expires_at is not None and info.expires_at <= timezone.now():
        raise KeyRejected("This API key has expired.", code="expired_api_key")
    return info
