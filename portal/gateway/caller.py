"""Who is asking: the identity a usage record is written for."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from registry.services.usage import UsageEntry


@dataclass(frozen=True)
class Caller:
    """Who is asking; becomes the usage record's key/app/user and the source."""

    source: str = "api"  # "api" | "signed" | "chat"
    api_key_id: int | None = None
    app_credential_id: int | None = None
    user_id: int | None = None

    def usage_entry(self, *, request_id: str, endpoint: str, model_name: str) -> UsageEntry:
        return UsageEntry(
            request_id=request_id,
            source=self.source,
            endpoint=endpoint,
            model_name=model_name,
            api_key_id=self.api_key_id,
            app_credential_id=self.app_credential_id,
            user_id=self.user_id,
        )


def new_request_id() -> str:
    return uuid.uuid4().hex
