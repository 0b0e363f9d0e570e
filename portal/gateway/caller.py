"""Who is asking: the identity a usage record is written for."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from portal.gateway.limits import Quota, Reservation
from portal.gateway.queue import QueueTerms
from registry.services.dispatch import MAX_MODEL_NAME_LENGTH
from registry.services.usage import UsageEntry


@dataclass(frozen=True)
class Caller:
    """Who is asking; becomes the usage record's key/app/user and the source.

    `quota` is what the gateway reserves the request against when it admits
    it (`reservation`, when a door reserved already); the request's Ticket
    settles it with the real usage when the request ends. `allowed_model_ids`:
    the models it may use (None: every one).
    """

    source: str = "api"  # "api" | "signed" | "chat"
    api_key_id: int | None = None
    app_credential_id: int | None = None
    user_id: int | None = None
    team_id: int | None = None  # the team whose budget it spends
    reservation: Reservation | None = field(default=None, compare=False, repr=False)
    quota: Quota | None = None
    allowed_model_ids: frozenset[int] | None = None
    # True (the OpenAI API): a model it cannot use (400, 403, 404) is refused before its limits, and
    # unrecorded. False (the signed API, the chat page): limits first, every refusal recorded but theirs.
    model_first: bool = False
    queue_priority: int = 0  # an API key's place in the shared queue (0-9, higher first)
    max_queued: int | None = None  # its cap on requests waiting there; None: QUEUE_MAX_PER_CALLER
    log_days: int = 0  # days its requests' bodies are kept (its team's or key's request log); 0: not kept

    def may_use(self, model_id: int) -> bool:
        return self.allowed_model_ids is None or model_id in self.allowed_model_ids

    @property
    def queue_terms(self) -> QueueTerms:
        if self.api_key_id is not None:
            caller = f"key:{self.api_key_id}"
        elif self.app_credential_id is not None:
            caller = f"app:{self.app_credential_id}"
        elif self.user_id is not None:
            caller = f"user:{self.user_id}"
        else:
            caller = "anonymous"
        return QueueTerms(caller=caller, priority=self.queue_priority, max_queued=self.max_queued)

    def usage_entry(self, *, request_id: str, endpoint: str, model_name: str) -> UsageEntry:
        return UsageEntry(
            request_id=request_id,
            source=self.source,
            endpoint=endpoint,
            model_name=model_name[:MAX_MODEL_NAME_LENGTH],  # a client's name, refused later if too long
            api_key_id=self.api_key_id,
            app_credential_id=self.app_credential_id,
            user_id=self.user_id,
            team_id=self.team_id,
        )


def new_request_id() -> str:
    """A request id made by the portal: the worker-side id and the abort path never come from a client."""
    return uuid.uuid4().hex
