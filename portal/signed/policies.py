"""Signature policies, one class per `signType`, with DRF-style tiny interfaces.

A policy says whether an app may use it, verifies a request against the app's
secret (and keys), and names what the replay guard remembers.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
from typing import ClassVar

from django.conf import settings

from portal.signed import sm2
from portal.signed.canonical import candidate_strings, sha256_sign_data
from portal.signed.envelope import SignedRequest
from portal.signed.intake import off_loop_if_large
from registry.services.credentials import CredentialSnapshot

logger = logging.getLogger(__name__)


class SignaturePolicy:
    """Base policy: every app may use it, nothing verifies, nothing is remembered."""

    sign_type: ClassVar[str] = ""

    def refusal(self, credential: CredentialSnapshot) -> str | None:
        """Return why this app may not use this signType, or None when it may."""
        return None

    async def verify(self, request: SignedRequest, credential: CredentialSnapshot) -> bool:
        raise NotImplementedError

    def replay_key(self, request: SignedRequest) -> str | None:
        """Return what identifies this signature for the replay guard (None: not guarded)."""
        return hashlib.sha256(request.sign_data.encode("utf-8")).hexdigest()


class Sha256Signature(SignaturePolicy):
    sign_type = "SHA256"

    async def verify(self, request: SignedRequest, credential: CredentialSnapshot) -> bool:
        # Up to four canonical strings of the whole body: a large one is built in a thread.
        return await off_loop_if_large(request.size, _sha256_matches, request, credential.secret)


def _sha256_matches(request: SignedRequest, secret: str) -> bool:
    given = request.sign_data.encode("utf-8")
    return any(
        hmac.compare_digest(sha256_sign_data(text).encode("ascii"), given)
        for text in candidate_strings(request.fields, secret)
    )


@functools.lru_cache(maxsize=2)
def _deployment_public_key(private_key_base64: str) -> str | None:
    try:
        return sm2.public_key_from_private(sm2.private_key_from_base64(private_key_base64))
    except sm2.InvalidKey as exc:
        logger.error("SM2_PRIVATE_KEY is unusable, deployment-wide SM2 key ignored: %s", exc)
        return None


def deployment_public_key() -> str | None:
    """The public half of SM2_PRIVATE_KEY, go-infer's single server-wide SM2 key."""
    value = settings.SM2_PRIVATE_KEY
    return _deployment_public_key(value) if value else None


class Sm2Signature(SignaturePolicy):
    sign_type = "SM2"

    def refusal(self, credential: CredentialSnapshot) -> str | None:
        if credential.sm2_public_key or deployment_public_key():
            return None
        return "signType SM2 is not allowed: no SM2 public key is registered for this app"

    async def verify(self, request: SignedRequest, credential: CredentialSnapshot) -> bool:
        signature = sm2.decode_signature(request.sign_data)
        if signature is None:
            return False
        keys = [k for k in (credential.sm2_public_key, deployment_public_key()) if k]
        texts = list(candidate_strings(request.fields, credential.secret))
        # Pure-Python curve arithmetic takes ~10 ms: keep it off the event loop.
        return await asyncio.to_thread(_verify_any, texts, signature, keys)

    def replay_key(self, request: SignedRequest) -> str | None:
        # Key on the decoded bytes: two base64 spellings of one signature are one signature.
        signature = sm2.decode_signature(request.sign_data) or request.sign_data.encode("utf-8")
        return hashlib.sha256(signature).hexdigest()


def _verify_any(texts: list[str], signature: bytes, keys: list[str]) -> bool:
    return any(sm2.verify(text, signature, public_key_hex=key) for key in keys for text in texts)


class PlainSignature(SignaturePolicy):
    """No signature at all; only for apps that an operator marked allow_plain."""

    sign_type = "plain"

    def refusal(self, credential: CredentialSnapshot) -> str | None:
        return None if credential.allow_plain else "signType plain is not allowed for this app"

    async def verify(self, request: SignedRequest, credential: CredentialSnapshot) -> bool:
        return True

    def replay_key(self, request: SignedRequest) -> str | None:
        return None


POLICIES: dict[str, SignaturePolicy] = {
    policy.sign_type: policy for policy in (Sha256Signature(), Sm2Signature(), PlainSignature())
}
