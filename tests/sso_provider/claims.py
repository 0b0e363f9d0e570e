"""The provider's claims: e-mail and names, and `groups` (the user's Django groups) in the groups scope."""

from typing import Any

from oidc_provider.lib.claims import ScopeClaims


def userinfo(claims: dict[str, Any], user: Any) -> dict[str, Any]:
    claims.update(
        email=user.email,
        email_verified=True,
        preferred_username=user.username,
        given_name=user.first_name,
        family_name=user.last_name,
    )
    return claims


class GroupsScope(ScopeClaims):
    info_groups = ("Groups", "The groups you belong to.")

    def scope_groups(self) -> dict[str, Any]:
        return {"groups": sorted(self.user.groups.values_list("name", flat=True))}
