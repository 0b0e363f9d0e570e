"""Who is acting now: an admin request or a management command (a context variable, per task and thread).

Changes are recorded only while someone acts: a worker's heartbeat, the
scheduler and the request path change rows too, and are nobody's doing.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand

from audit.models import AuditSource


@dataclass(frozen=True)
class Acting:
    """An admin request (its user is read when a change is recorded) or a command (named)."""

    source: str
    request: Any = None
    name: str = ""
    paused: bool = False  # an admin action records its own entries: the saves inside it do not

    def actor(self) -> tuple[int | None, str]:
        """The user's id and name (None and the command's name for a command)."""
        user = getattr(self.request, "user", None)
        if user is not None and user.is_authenticated:
            return int(user.pk), user.get_username()
        return None, self.name or "anonymous"


_acting: ContextVar[Acting | None] = ContextVar("audit_acting", default=None)


def current() -> Acting | None:
    acting = _acting.get()
    return None if acting is None or acting.paused else acting


@contextlib.contextmanager
def acting(value: Acting) -> Iterator[Acting]:
    token = _acting.set(value)
    try:
        yield value
    finally:
        _acting.reset(token)


def command(name: str) -> contextlib.AbstractContextManager[Acting]:
    """A management command acts: `manage.py NAME` run by this OS user."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return acting(Acting(AuditSource.COMMAND, name=f"manage.py {name} ({who})"))


@contextlib.contextmanager
def paused() -> Iterator[None]:
    now = _acting.get()
    if now is None:
        yield
        return
    with acting(Acting(now.source, now.request, now.name, paused=True)):
        yield


class AuditedCommand(BaseCommand):
    """A management command whose changes the audit trail records, as `manage.py NAME (OS user)`."""

    def execute(self, *args: Any, **options: Any) -> Any:
        with command(self.__module__.rsplit(".", 1)[-1]):
            return super().execute(*args, **options)
