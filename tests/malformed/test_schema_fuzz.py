"""schemathesis with `--checks all` against the portal's own OpenAPI schema: the server does what it says.

A real portal and canned-engine workers (a named fake, so that thousands of
generated requests cost no model time); every operation of `/api/schema/`
is called through schemathesis's command line, as its users run it, with
its examples, coverage and fuzzing phases. Besides "no 5xx", the checks ask
that schema-valid bodies be accepted and invalid ones refused, that answers
match their declared status, content type and schema, and that a method the
schema does not list gets 405 with `Allow`. schema_hooks.py sends bodies to
the served models, signs the signed API's requests as a registered app,
lists the rules the schema cannot state and checks the signed API's
envelope codes; schemathesis.toml says its refusals are 200s.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal import env
from registry.services.credentials import create_app_credential
from registry.services.keys import create_api_key
from tests.portal_process import start_portal
from tests.processes import REPO_ROOT, WorkerProcess, all_ready, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]
TOKEN = "schema-fuzz-worker-token"
HERE = Path(__file__).parent
MAX_EXAMPLES = 20  # per operation and mode in the fuzzing phase; the coverage phase sends its own set


@pytest.fixture
def portal_url() -> Iterator[str]:
    env = subprocess_env({"WORKER_TOKEN": TOKEN})
    base = ["--backend", "canned", "--heartbeat-interval", "1", "--max-concurrency", "8"]
    chat = WorkerProcess(["--model-path", "canned", "--model-names", "canned", *base], env)
    embed_args = ["--model-path", "canned-embed", "--model-names", "embedder", "--canned-task", "embed"]
    chat, embed = all_ready(chat, WorkerProcess([*embed_args, *base], env))
    with chat, embed, start_portal(env=env) as portal:
        yield portal.url


def test_every_operation_does_what_the_schema_says_under_all_checks(portal_url: str, tmp_path: Path) -> None:
    _, secret = create_api_key(name="schemathesis")
    app_id, app_secret = "schemathesis", "schemathesis-app-secret-0123456789"
    create_app_credential(app_id=app_id, secret=app_secret)
    command = [
        str(Path(sys.executable).with_name("st")), "--no-color",
        "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{portal_url}/api/schema/?format=json", "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--generation-database", "none",
        "--request-timeout", "60", "--continue-on-failure", "-H", f"Authorization: Bearer {secret}",
        # drf-spectacular's own view, which serves the document under test, is not ours to describe.
        "--exclude-path", "/api/schema/",
    ]  # fmt: skip
    run_env = {
        **subprocess_env(),
        "SCHEMATHESIS_HOOKS": "tests.malformed.schema_hooks",
        "SIGNED_APP_ID": app_id,  # the hooks sign the signed API's requests as this app
        "SIGNED_APP_SECRET": app_secret,
        "PYTHONPATH": str(REPO_ROOT),
    }
    result = subprocess.run(command, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=540)
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    # Kept for the record (scripts/test runs pytest -q, which shows no output of a passing test).
    (env.VAR_DIR / "schemathesis-report.txt").write_text(summary)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    selected = re.search(r"Selected: (\d+)/\d+\s+Tested: (\d+)", summary)
    assert selected is not None, summary
    assert selected[1] == selected[2], summary  # every operation selected was tested
    assert int(selected[1]) >= 7  # the four /v1 operations and the three signed pipelines
