"""Whose usage a user may see: the one rule the usage page, its CSVs, its request log search and the
console dashboard's team figures share.

- a superuser, or a user who manages every team (the admin role): every team's;
- a member of a team: their own team's only (the first by name when several),
  whatever else their role lets them see (a viewer of a team sees that team);
- a user with the usage permission and no team (the platform's own staff): every team's;
- anyone else: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from teams.models import Team
from teams.roles import EVERY_TEAM

USAGE_PERMISSION = "registry.view_usagerecord"


@dataclass(frozen=True)
class UsageScope:
    """`allowed`: may see usage at all; `team_id`: the one team they may see (None: every team)."""

    allowed: bool
    team_id: int | None = None

    def covers(self, team_id: int | None) -> bool:
        return self.allowed and (self.team_id is None or team_id == self.team_id)


EVERY = UsageScope(allowed=True)
NONE = UsageScope(allowed=False)


def usage_scope(user: Any) -> UsageScope:
    """The usage `user` may see (see the module), kept on the user object as Django keeps its permissions.

    A page asks several times (its gate, its filters, its choices): one query for them all.
    """
    scope = getattr(user, "_usage_scope", None)
    if scope is None:
        scope = user._usage_scope = _usage_scope(user)
    return scope


def _usage_scope(user: Any) -> UsageScope:
    if not user.is_active:
        return NONE
    if user.is_superuser or user.has_perm(EVERY_TEAM):
        return EVERY
    mine = Team.objects.filter(members__id=int(user.pk or 0))
    team = mine.order_by("name").values_list("pk", flat=True).first()
    if team is not None:
        return UsageScope(allowed=True, team_id=team)
    return EVERY if user.has_perm(USAGE_PERMISSION) else NONE
