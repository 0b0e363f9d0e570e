"""Single sign-on (OpenID Connect, mozilla-django-oidc): users made on first login, their roles and teams
kept in step with the provider's groups claim at every login.

A provider group named in OIDC_ROLE_GROUPS ("idp-group=role,...") gives the
role (a group of `teams.roles`; any role makes the user staff, "admin"
superuser); a provider group "<OIDC_TEAM_GROUP_PREFIX><name>" makes the user
a member of the existing team <name>. Memberships and roles the claim no
longer gives are taken away; teams and roles outside the claim's reach
(a team the provider never names) are left as the admin set them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from teams.models import Team
from teams.roles import ADMIN, ROLES


def role_map() -> dict[str, str]:
    """Provider group → role, from OIDC_ROLE_GROUPS (unknown roles are refused at start by the settings)."""
    return dict(settings.OIDC_ROLE_GROUPS)


def claimed_groups(claims: dict[str, Any]) -> list[str]:
    value = claims.get(settings.OIDC_GROUPS_CLAIM, [])
    return [str(g) for g in value] if isinstance(value, list) else []


class PortalOIDCBackend(OIDCAuthenticationBackend):
    """Find or make the user by the provider's subject's e-mail; map the groups claim to roles and teams."""

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("email"))

    def create_user(self, claims: dict[str, Any]) -> Any:
        username = str(claims.get("preferred_username") or claims["email"])[:150]
        if self.UserModel.objects.filter(username=username).exists():
            username = str(claims["email"])[:150]
        user = self.UserModel.objects.create_user(username, email=claims["email"])
        user.set_unusable_password()
        return self.update_user(user, claims)

    @transaction.atomic
    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        groups = claimed_groups(claims)
        roles = {role_map()[g] for g in groups if g in role_map()}
        prefix = settings.OIDC_TEAM_GROUP_PREFIX
        team_names = {g[len(prefix) :] for g in groups if prefix and g.startswith(prefix)}
        user.first_name = str(claims.get("given_name") or "")[:150]
        user.last_name = str(claims.get("family_name") or "")[:150]
        user.is_staff = bool(roles)
        user.is_superuser = ADMIN in roles
        user.save()
        user.groups.remove(*Group.objects.filter(name__in=ROLES).exclude(name__in=roles))
        user.groups.add(*Group.objects.filter(name__in=roles))
        mapped = Team.objects.filter(name__in=team_names)
        for team in user.teams.exclude(pk__in=mapped):
            team.members.remove(user)
        for team in mapped:
            team.members.add(user)
        return user
