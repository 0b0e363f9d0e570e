"""Production defaults: the placeholder secret is refused, HTTPS settings come from the environment."""

import json
import subprocess
import sys

from tests.processes import REPO_ROOT

PRINT_SETTINGS = (
    "import json, django; from django.conf import settings; django.setup(); "
    "print(json.dumps({name: getattr(settings, name, None) for name in ["
    "'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SECURE_PROXY_SSL_HEADER', "
    "'SECURE_HSTS_SECONDS', 'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_SSL_REDIRECT']}))"
)


def load_settings(**environ: str) -> subprocess.CompletedProcess:
    # A clean environment (no .env values leak in: PORTAL settings read os.environ first).
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portal.settings", "DEBUG": "false", **environ}
    return subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_placeholder_secret_key_is_refused_when_debug_is_off():
    result = load_settings(SECRET_KEY="change-me")
    assert result.returncode != 0
    assert "placeholder" in result.stderr


def test_postgresql_gets_a_connection_pool_when_sized():
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        "db = settings.DATABASES['default']; "
        "print(json.dumps([db['CONN_MAX_AGE'], db['OPTIONS']['pool']['max_size']]))"
    )
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portal.settings", "SECRET_KEY": "x" * 50}
    env.update(DATABASE_URL="postgres://portal@127.0.0.1:5432/portal", DATABASE_POOL_SIZE="8")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [0, 8]  # Django refuses a pool with persistent connections


def test_missing_secret_key_is_refused_when_debug_is_off():
    result = load_settings(SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_https_settings_come_from_the_environment():
    result = load_settings(
        SECRET_KEY="a-long-random-production-secret",
        SECURE_COOKIES="true",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_SSL_REDIRECT": False,
    }


def test_loopback_default_keeps_plain_http_cookies():
    result = load_settings(SECRET_KEY="a-long-random-production-secret")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["SESSION_COOKIE_SECURE"] is False
    assert values["SECURE_PROXY_SSL_HEADER"] is None
    assert values["SECURE_HSTS_SECONDS"] == 0
