"""Fill the provider's database: a signing key, the portal as a client, and a user in some groups.

`python -m tests.sso_provider.setup REDIRECT_URI USERNAME PASSWORD GROUP...` (after migrate).
"""

import sys

import django

django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from oidc_provider.models import Client, ResponseType  # noqa: E402

CLIENT_ID, CLIENT_SECRET = "portal", "portal-test-secret"


def main(redirect_uri: str, username: str, password: str, *groups: str) -> None:
    call_command("creatersakey")
    client = Client.objects.create(
        name="portal",
        client_type="confidential",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        jwt_alg="RS256",
        require_consent=False,
        _redirect_uris=redirect_uri,
    )
    client.response_types.add(ResponseType.objects.get(value="code"))
    user = User.objects.create_user(
        username, email=f"{username}@example.org", password=password, first_name="Alice"
    )
    user.groups.add(*(Group.objects.get_or_create(name=name)[0] for name in groups))


if __name__ == "__main__":
    main(*sys.argv[1:])
