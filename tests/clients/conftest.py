"""A real SmolLM2 worker behind a real portal, for the clients nobody here wrote."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.portal_process import start_portal
from tests.processes import run_command, start_worker, subprocess_env

MODEL = "smollm2"


@dataclass(frozen=True)
class LivePortal:
    """Where a client points: the portal's `/v1`, a key and the served model's name."""

    url: str
    api_key: str = field(repr=False)
    model: str = MODEL

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def smollm2_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePortal]:
    """SmolLM2 on the transformers engine in float32 (greedy answers repeat), behind a daphne portal.

    Started once for every client module, on a SQLite database of its own: the
    tests' databases are emptied after each test, which would take the
    worker's row and the key from under the other tests.
    """
    database = tmp_path_factory.mktemp("clients") / "portal.sqlite3"
    env = subprocess_env({"DATABASE_URL": f"sqlite:///{database}"})
    for command in (("migrate", "--noinput"), ("createapikey", "--name", "clients")):
        done = run_command(*command, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
    secret = done.stdout.strip().splitlines()[-1]
    worker = start_worker(
        "--model-path", "smollm2-135m-instruct", "--model-names", MODEL, "--device", "cpu",
        "--backend", "transformers", "--dtype", "float32", env=env, timeout=300,
    )  # fmt: skip
    with worker, start_portal(env=env) as portal:
        yield LivePortal(portal.url, secret)
