"""API-key authentication, as a DRF-style policy class with an async `authenticate`."""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.http import HttpRequest

from portal.api.errors import unauthorized
from portal.gateway.gateway import current
from portal.gateway.tasks import spawn
from registry.models import ApiKey
from registry.services.keys import KeyInfo, KeyRejected, aauthenticate_secret
from registry.services.last_used import touch_last_used


class ApiKeyAuthentication:
    """`Authorization: Bearer sk-...` (or `api-key: sk-...`) → the key's KeyInfo, or a 401."""

    keyword = "Bearer"

    def authenticate_header(self, request: HttpRequest) -> str:
        return f'{self.keyword} realm="api"'

    async def authenticate(self, request: HttpRequest) -> KeyInfo:
        secret = self._secret(request)
        if not secret:
            raise unauthorized(
                "Missing API key: send it as 'Authorization: Bearer sk-...'.", code="missing_api_key"
            )
        gateway = current()
        await gateway.watch.check()  # an admin change reaches the key's cached lookup within a second
        try:
            info = await aauthenticate_secret(secret)
        except KeyRejected as exc:
            raise unauthorized(str(exc), code=exc.code) from None
        if gateway.key_touches.due(info.id):
            # last_used_at is bookkeeping: written in the background, at most once a minute per key.
            spawn(database_sync_to_async(touch_last_used)(model=ApiKey, row_id=info.id))
        return info

    def _secret(self, request: HttpRequest) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == self.keyword.lower():
            return value.strip()
        return request.headers.get("api-key", "").strip()
