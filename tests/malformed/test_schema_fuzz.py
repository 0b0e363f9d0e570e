"""schemathesis against the portal's own OpenAPI schema: no `/v1` operation answers 5xx.

A real portal and a canned-engine worker (a named fake, so that thousands of
generated requests cost no model time); every `/v1` operation in
`/api/schema/` is called with a valid key and schema-derived bodies, both
valid and invalid ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from portal import env
from registry.services.keys import create_api_key
from tests.portal_process import start_portal
from tests.processes import start_worker, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]
TOKEN = "schema-fuzz-worker-token"
EXAMPLES_PER_MODE = 100


@pytest.fixture
def portal_url() -> Iterator[str]:
    env = subprocess_env({"WORKER_TOKEN": TOKEN})
    base = ["--backend", "canned", "--heartbeat-interval", "1", "--max-concurrency", "8"]
    chat = start_worker("--model-path", "canned", "--model-names", "canned", *base, env=env)
    embed = start_worker(
        "--model-path", "canned-embed", "--model-names", "embedder", "--canned-task", "embed", *base, env=env
    )
    try:
        with start_portal(env=env) as portal:
            yield portal.url
    finally:
        chat.kill()
        embed.kill()


def fuzz(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    headers: dict[str, str],
    statuses: Counter[int],
) -> None:
    """Call `operation` with generated cases (valid or invalid per `mode`); any 5xx fails.

    Valid cases name a served model, so that they reach a worker instead of stopping at a 404.
    """
    served = "embedder" if operation.path.endswith("embeddings") else "canned"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        if mode == GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = served
        response = case.call(headers=headers, timeout=30)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])

    run()


def test_no_v1_operation_answers_5xx(portal_url: str) -> None:
    _, secret = create_api_key(name="schemathesis")
    schema = schemathesis.openapi.from_url(f"{portal_url}/api/schema/?format=json").include(
        path_regex="^/v1/"
    )
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {op.label for op in operations} >= {
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/embeddings",
        "GET /v1/models",
    }
    statuses: Counter[int] = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, {"Authorization": f"Bearer {secret}"}, statuses)
    histogram = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
    report = f"schemathesis: {sum(statuses.values())} calls; {histogram}"
    print("\n" + report)
    # Kept for the record (scripts/test runs pytest -q, which shows no output of a passing test).
    (env.VAR_DIR / "schemathesis-report.txt").write_text(report + "\n")
    assert statuses[200] > 0  # valid cases did reach the workers
