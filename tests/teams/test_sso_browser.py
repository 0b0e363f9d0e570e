"""Single sign-on end to end: Chromium, a real portal, and a real OpenID provider on loopback.

The provider is a small django-oidc-provider project (tests/sso_provider)
started as a process with its own database. The portal runs with password
login off: its login page sends the browser to the provider, whose user
comes back as a new portal user with the role and the team that the groups
claim maps to; a password posted to the portal is refused.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from django.contrib.auth import get_user_model

from teams.models import Team
from teams.roles import OPERATOR, ensure_roles
from tests.browser import Pages, outside_the_event_loop
from tests.portal_process import PortalProcess, free_port
from tests.processes import REPO_ROOT, subprocess_env

pytest_plugins = ["tests.browser_fixtures"]
pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]
USER, PASSWORD = "alice", "provider-pass-123"


def provider_env(database: Path) -> dict[str, str]:
    env = subprocess_env({"SSO_PROVIDER_DB": str(database)})
    env["DJANGO_SETTINGS_MODULE"] = "tests.sso_provider.settings"
    env.pop("DATABASE_URL", None)
    return env


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The provider's base URL and the port the portal will take (its callback is registered there)."""
    env, port, portal_port = provider_env(tmp_path / "provider.sqlite3"), free_port(), free_port()
    callback = f"http://127.0.0.1:{portal_port}/oidc/callback/"
    for command in (
        ["-m", "django", "migrate", "--no-input", "-v", "0"],
        ["-m", "tests.sso_provider.setup", callback, USER, PASSWORD, "ops", "team:blue", "unmapped"],
    ):
        subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=env, check=True, timeout=120)
    log = (tmp_path / "provider.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "provider.log").read_text()
            try:
                if (
                    httpx2.get(f"{base}/openid/.well-known/openid-configuration", timeout=1).status_code
                    == 200
                ):
                    break
            except httpx2.HTTPError:
                pass
            assert time.monotonic() < deadline, "the provider did not answer within 30 s"
            time.sleep(0.2)
        yield base, portal_port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def portal(provider: tuple[str, int]) -> Iterator[PortalProcess]:
    base, port = provider
    ensure_roles()  # the test database is flushed between tests: the role groups are made again
    Team.objects.create(name="blue")
    settings = {
        "OIDC_RP_CLIENT_ID": "portal",
        "OIDC_RP_CLIENT_SECRET": "portal-test-secret",
        "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{base}/openid/authorize",
        "OIDC_OP_TOKEN_ENDPOINT": f"{base}/openid/token",
        "OIDC_OP_USER_ENDPOINT": f"{base}/openid/userinfo",
        "OIDC_OP_JWKS_ENDPOINT": f"{base}/openid/jwks",
        "OIDC_ROLE_GROUPS": "ops=operator",
        "PASSWORD_LOGIN": "false",
    }
    process = PortalProcess(port, subprocess_env(settings))
    process.wait_ready(60)
    with process:
        yield process


def test_a_provider_user_signs_in_and_gets_the_role_and_team_of_their_groups(portal, pages: Pages):
    page = pages.open()
    page.goto(f"{portal.url}/admin/")
    page.wait_for_selector("#provider-login")  # straight to the provider: no password form here
    page.fill("#provider-username", USER)
    page.fill("#provider-password", PASSWORD)
    page.click("#provider-submit")
    page.wait_for_url(f"{portal.url}/admin/")
    assert page.title() == "Console | Model portal"  # the admin's index, signed in
    page.goto(f"{portal.url}/admin/console/")  # an operator's console
    assert page.locator("#fleet-workers").count() == 1

    def who() -> tuple[bool, list[str], list[str], str]:
        user = get_user_model().objects.get(username=USER)
        groups = sorted(user.groups.values_list("name", flat=True))
        return user.is_staff, groups, sorted(user.teams.values_list("name", flat=True)), user.email

    assert outside_the_event_loop(who) == (True, [OPERATOR], ["blue"], f"{USER}@example.org")
    for login in ("/admin/login/", "/chat/login/"):
        refused = httpx2.post(f"{portal.url}{login}", data={"username": USER, "password": "x"}, timeout=10)
        assert refused.status_code == 403, login
    # The chat page's login goes to the provider too (a new browser context: signing in again).
    chat = pages.open()
    chat.goto(f"{portal.url}/chat/")
    chat.wait_for_selector("#provider-login")
    chat.fill("#provider-username", USER)
    chat.fill("#provider-password", PASSWORD)
    chat.click("#provider-submit")
    chat.wait_for_url(f"{portal.url}/chat/")
