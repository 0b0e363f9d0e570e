"""Signature policies: one DRF authentication class per `signType`, with tiny interfaces.

A policy says whether an app may use it, verifies a request against the app's
secret (and keys), and names what the replay guard remembers. A view accepts
exactly the signTypes of its `authentication_classes` (`portal.signed.views`):
a signType that none of them names is refused with 9803.

The signature is inside the JSON body, next to the `data` it signs, so it is
checked once the envelope is parsed, by `authenticate_signed` awaited on the
event loop; DRF's sync `authenticate(request)` is left unimplemented (it
raises), so that no code path can take a request as authenticated without it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
from collections.abc import Iterable
from typing import ClassVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from rest_framework.authentication import BaseAuthentication

from portal.signed.envelope import Code, SignedApiError, SignedRequest
from portal.signed.intake import off_loop_if_large
from registry.services.credentials import CredentialSnapshot
from signing import sm2
from signing.canonical import candidate_strings, sha256_sign_data

logger = logging.getLogger(__name__)


class SignaturePolicy(BaseAuthentication):
    """Base policy: every app may use it, nothing verifies, nothing is remembered."""

    sign_type: ClassVar[str] = ""
    # What the OpenAPI schema says about this signType.
    description: ClassVar[str] = ""

    async def authenticate_signed(self, request: SignedRequest, credential: CredentialSnapshot) -> None:
        """Refuse with 9803 when the app may not use this signType, 9800 when the signature fails."""
        refusal = self.refusal(credential)
        if refusal is not None:
            raise SignedApiError(Code.SIGN_TYPE_NOT_ALLOWED, refusal)
        if not await self.verify(request, credential):
            raise SignedApiError(Code.BAD_SIGNATURE, "signature verification failed")

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
    description = "signData = base64(lowercase hex(SHA-256(string to sign))); the secret ends the string."

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
    description = (
        "signData = base64(r‖s) of SM2-with-SM3 (user id 1234567812345678) over the string to sign, "
        "checked against the app's SM2 public key or the deployment's."
    )

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
    description = "No signature; only for apps that an operator allowed plain requests."

    def refusal(self, credential: CredentialSnapshot) -> str | None:
        return None if credential.allow_plain else "signType plain is not allowed for this app"

    async def verify(self, request: SignedRequest, credential: CredentialSnapshot) -> bool:
        return True

    def replay_key(self, request: SignedRequest) -> str | None:
        return None


def signature_policies(authenticators: Iterable[object]) -> tuple[SignaturePolicy, ...]:
    """Return a view's authenticators, which must all be signature policies with distinct signTypes."""
    authenticators = list(authenticators)
    policies = tuple(a for a in authenticators if isinstance(a, SignaturePolicy))
    sign_types = {policy.sign_type for policy in policies}
    if len(policies) != len(authenticators) or len(sign_types) != len(policies) or "" in sign_types:
        raise ImproperlyConfigured(
            "a signed view's authentication_classes must be SignaturePolicy classes, one per signType"
        )
    return policies
