"""App credentials for the signed API: create, encrypt the secret at rest, look up (cached briefly).

The signed API needs the secret itself (it recomputes the SHA256 signature), so
the secret cannot be hashed like an API key: it is encrypted with Fernet under
a key derived from SECRET_KEY by HKDF. Rotating SECRET_KEY keeps old secrets
readable while the old key sits in SECRET_KEY_FALLBACKS.
"""

from __future__ import annotations

import base64
import functools
import logging
import secrets
from collections.abc import Hashable
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import transaction

from registry.models import AppCredential
from registry.services.cache import RefreshingCache
from registry.services.request_log import log_days
from signing.sm2 import normalize_public_key
from teams.budgets import BudgetLimits, team_budget
from teams.models import Team

logger = logging.getLogger(__name__)

_HKDF_SALT = b"modelportal.registry.appcredential"
_HKDF_INFO = b"app secret at rest"
# Lookups kept per process, unknown app ids included: an LRU, so a flood of made-up ids only
# evicts the oldest entries.
CREDENTIAL_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class CredentialSnapshot:
    """What the signed API needs to know about an app; the secret never shows in a repr."""

    id: int
    app_id: str
    secret: str = field(repr=False)
    sm2_public_key: str
    allow_plain: bool
    allowed_pipelines: tuple[str, ...]
    enabled: bool
    requests_per_minute: int | None
    tokens_per_minute: int | None = None
    max_in_flight: int | None = None
    team_id: int | None = None
    budgets: tuple[BudgetLimits, ...] = ()  # its team's
    log_days: int = 0  # its team's request log: days its requests' bodies are kept; 0: not kept

    def may_call(self, pipeline: str) -> bool:
        """An empty allow list means every pipeline."""
        return not self.allowed_pipelines or pipeline in self.allowed_pipelines


def _fernet_key(secret_key: str) -> bytes:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(
        secret_key.encode("utf-8")
    )
    return base64.urlsafe_b64encode(derived)


@functools.lru_cache(maxsize=4)
def _cipher(secret_key: str, fallbacks: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(key)) for key in (secret_key, *fallbacks)])


def _current_cipher() -> MultiFernet:
    return _cipher(settings.SECRET_KEY, tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ())))


def encrypt_secret(secret: str) -> str:
    """Encrypt an app secret for storage."""
    return _current_cipher().encrypt(secret.encode("utf-8")).decode("ascii")


def decrypt_secret(ciphertext: str) -> str:
    """Decrypt a stored app secret; raise InvalidToken when SECRET_KEY no longer opens it."""
    return _current_cipher().decrypt(ciphertext.encode("ascii")).decode("utf-8")


def generate_secret() -> str:
    """Return a new secret in go-infer's style: 32 uppercase hex digits (128 bits)."""
    return secrets.token_hex(16).upper()


def mask_secret(secret: str) -> str:
    """Show enough of a secret to recognise it, never enough to use it."""
    return "•" * 8 if len(secret) < 12 else f"{secret[:4]}…{secret[-4:]}"


def create_app_credential(
    *,
    app_id: str,
    secret: str | None = None,
    name: str = "",
    sm2_public_key: str = "",
    allow_plain: bool = False,
    allowed_pipelines: list[str] | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_in_flight: int | None = None,
    team: Team | None = None,
) -> tuple[AppCredential, str]:
    """Create an app credential and return it with its plain secret (generated when not given)."""
    plain_secret = secret or generate_secret()
    credential = AppCredential(
        app_id=app_id,
        name=name,
        secret_ciphertext=encrypt_secret(plain_secret),
        sm2_public_key=normalize_public_key(sm2_public_key) if sm2_public_key else "",
        allow_plain=allow_plain,
        allowed_pipelines=list(allowed_pipelines or []),
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        max_in_flight=max_in_flight,
        team=team,
    )
    with transaction.atomic():
        credential.full_clean()
        credential.save()
    forget_cached_credential(app_id)
    return credential, plain_secret


def snapshot_of(credential: AppCredential) -> CredentialSnapshot | None:
    """Build the snapshot, or None (logged) when the stored secret cannot be decrypted."""
    try:
        secret = decrypt_secret(credential.secret_ciphertext)
    except InvalidToken:
        logger.error("app %s: the secret cannot be decrypted (SECRET_KEY changed?)", credential.app_id)
        return None
    return CredentialSnapshot(
        id=credential.pk,
        app_id=credential.app_id,
        secret=secret,
        sm2_public_key=credential.sm2_public_key,
        allow_plain=credential.allow_plain,
        allowed_pipelines=tuple(str(p) for p in credential.allowed_pipelines or ()),
        enabled=credential.enabled,
        requests_per_minute=credential.requests_per_minute,
        tokens_per_minute=credential.tokens_per_minute,
        max_in_flight=credential.max_in_flight,
        team_id=credential.team_id,
        budgets=team_budget(credential.team),
        log_days=log_days(credential.team),
    )


async def _load_credential(app_id: Hashable) -> CredentialSnapshot | None:
    credential = await AppCredential.objects.filter(app_id=str(app_id)).select_related("team").afirst()
    return None if credential is None else snapshot_of(credential)


# A changed app is forgotten at once in this process, and in others through the registry version.
_cache: RefreshingCache[CredentialSnapshot | None] = RefreshingCache(
    _load_credential,
    ttl=lambda: float(settings.API_KEY_CACHE_SECONDS),
    max_stale=lambda: float(settings.API_KEY_CACHE_SECONDS),  # expired: read again before it is served
    max_entries=CREDENTIAL_CACHE_ENTRIES,
)


def forget_cached_credential(app_id: str | None = None) -> None:
    """Drop one app (or all) from this process's lookup cache, after a change."""
    if app_id is None:
        _cache.clear()
    else:
        _cache.forget(app_id)


async def aget_credential(app_id: str) -> CredentialSnapshot | None:
    """Return the app's snapshot (None if unknown), cached for API_KEY_CACHE_SECONDS.

    Misses are cached too, so a flood of unknown app ids does not reach the database.
    A disabled app is returned as such; the caller refuses it.
    """
    return await _cache.get(app_id)
