"""Settings for the test run: the portal's own, with test-only environment defaults.

The environment is set before `portal.settings` is imported, and child
processes (workers, portals started by tests) inherit it.
"""

import os

# A developer's .env (scripts/start writes one, with a WORKER_TOKEN) must not change the tests.
os.environ.setdefault("ENV_FILE", os.devnull)
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No process a test starts builds llama.cpp (minutes of compiling); `LLAMACPP_NATIVE=on pytest …` with
# LLAMACPP_BUILD_DIR set runs the llama.cpp tests on a build made beforehand.
os.environ.setdefault("LLAMACPP_NATIVE", "off")

# Each pytest-xdist worker keeps its files (logs, the SQLite database) apart; the processes it starts
# inherit both variables and keep its directory. The model cache is the run's, shared: a packaged
# model is converted once per run, not once per worker (its writer locks and renames atomically).
_var = os.environ.get("PORTAL_VAR_DIR") or os.path.join(os.path.dirname(os.path.dirname(__file__)), "var")
os.environ.setdefault("MODEL_CACHE_DIR", os.path.join(_var, "models"))
if (worker := os.environ.get("PYTEST_XDIST_WORKER")) and os.path.basename(_var) != worker:
    os.environ["PORTAL_VAR_DIR"] = os.path.join(_var, worker)

from portal.settings import *  # noqa: E402, F403

# Two test runs at once on one checkout (a developer's beside another's) each get a database file of
# their own; the processes a run starts are given its file's name (tests.processes.database_url).
_default = DATABASES["default"]  # noqa: F405
if _default["ENGINE"].endswith("sqlite3"):
    _default["TEST"]["NAME"] = _default["TEST"]["NAME"].replace(".sqlite3", f"-{os.getpid()}.sqlite3")

# Django's advice for test runs: its default hasher spends a quarter of a second on each password
# set or checked, by design; the suite creates and logs in users by the hundred.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
