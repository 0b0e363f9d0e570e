"""The admin of a team's API keys and app credentials: a key manager sees and changes their teams' only.

A user with `teams.manage_every_team` (the admin role) or a superuser sees
every row; any other user sees the rows of the teams they belong to, may
give a row only one of those teams, and may not open another team's row.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from teams.models import Team
from teams.roles import EVERY_TEAM


def own_teams(request: HttpRequest) -> QuerySet[Team] | None:
    """The teams whose rows this user may manage; None: every team's."""
    user = request.user
    if user.is_superuser or user.has_perm(EVERY_TEAM):
        return None
    return Team.objects.filter(members__id=int(user.pk or 0))


class TeamScopedAdmin(admin.ModelAdmin):
    """A ModelAdmin of rows with a `team`, narrowed to the user's own teams (see the module)."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows = super().get_queryset(request)
        teams = own_teams(request)
        return rows if teams is None else rows.filter(team__in=teams)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        teams = own_teams(request)
        if db_field.name == "team" and teams is not None:
            kwargs["queryset"] = teams
            field = super().formfield_for_foreignkey(db_field, request, **kwargs)
            if field is not None:
                field.required = True  # a key manager's rows always belong to one of their teams
            return field
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        teams = own_teams(request)
        if teams is not None and not teams.filter(pk=getattr(obj, "team_id", None) or 0).exists():
            raise PermissionDenied
        super().save_model(request, obj, form, change)
