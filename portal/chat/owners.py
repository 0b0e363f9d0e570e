"""Who owns a chat: a signed-in user, or an anonymous session when demo mode allows it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Q


@dataclass(frozen=True)
class Owner:
    """The key conversations and battles are filed under."""

    user_id: int | None = None
    session_key: str = ""

    def filter(self) -> Q:
        """Return a Q that matches rows belonging to this owner only."""
        if self.user_id is not None:
            return Q(user_id=self.user_id)
        return Q(user__isnull=True, session_key=self.session_key)

    def fields(self) -> dict[str, Any]:
        """Return the model fields that stamp a new row with this owner."""
        if self.user_id is not None:
            return {"user_id": self.user_id, "session_key": ""}
        return {"user_id": None, "session_key": self.session_key}


def owner_for(user: Any, session_key: str | None) -> Owner | None:
    """Return the owner for a user and session, or None when chat is not allowed.

    Anonymous visitors chat only when CHAT_ALLOW_ANONYMOUS is on and they carry a
    session, so that two visitors never see each other's conversations.
    """
    if user is not None and user.is_authenticated:
        return Owner(user_id=user.pk)
    if settings.CHAT_ALLOW_ANONYMOUS and session_key:
        return Owner(session_key=session_key)
    return None
