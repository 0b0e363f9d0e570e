"""The one place that reads the process environment.

Every setting that a deployment may change is declared here with its type and
its embedded-mode default; `portal.settings` and the worker read values from
this module only.
"""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# ENV_FILE points elsewhere (scripts/start's tests use their own); the environment wins over it.
environ.Env.read_env(env.str("ENV_FILE", default=str(BASE_DIR / ".env")), overwrite=False)

VAR_DIR = Path(env.str("PORTAL_VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG: bool = env.bool("DEBUG", default=False)
SECRET_KEY: str | None = env.str("SECRET_KEY", default=None)
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Browser origins that may call /v1 (CORS), e.g. "https://app.example.com"; "*": any (never with credentials).
CORS_ALLOWED_ORIGINS: list[str] = env.list("CORS_ALLOWED_ORIGINS", default=[])
# Whether those origins' requests may carry cookies or HTTP authentication (API keys need not).
CORS_ALLOW_CREDENTIALS: bool = env.bool("CORS_ALLOW_CREDENTIALS", default=False)
# HTTPS behind a proxy: on in the production examples (deploy/), off for the loopback default.
SECURE_COOKIES: bool = env.bool("SECURE_COOKIES", default=False)
# The header a TLS-terminating proxy sets, e.g. "X-Forwarded-Proto"; empty: trust none.
SECURE_PROXY_SSL_HEADER: str = env.str("SECURE_PROXY_SSL_HEADER", default="")
SECURE_SSL_REDIRECT: bool = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS: int = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS: bool = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD: bool = env.bool("SECURE_HSTS_PRELOAD", default=False)
DATABASE_URL: str = env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'portal.sqlite3'}")
REDIS_URL: str | None = env.str("REDIS_URL", default=None)
# The longest a portal waits on Redis for one command (limits, queue, usage records, cache): a healthy
# Redis answers in about a millisecond, and a stalled one must not hold the requests.
REDIS_TIMEOUT_SECONDS: float = env.float("REDIS_TIMEOUT_SECONDS", default=0.5)
# Portal processes sharing the limits; while Redis fails each counts every limit at 1/PORTAL_COUNT.
PORTAL_COUNT: int = max(1, env.int("PORTAL_COUNT", default=1))
# Off behind nginx, which serves STATIC_ROOT itself (deploy/nginx).
SERVE_STATIC: bool = env.bool("SERVE_STATIC", default=True)
LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO")

# Workers
HEARTBEAT_INTERVAL: float = env.float("HEARTBEAT_INTERVAL", default=5.0)
# A worker whose last heartbeat is older than this many intervals is offline.
HEARTBEAT_EXPIRY_INTERVALS: int = env.int("HEARTBEAT_EXPIRY_INTERVALS", default=3)
MODEL_CACHE_DIR = Path(env.str("MODEL_CACHE_DIR", default=str(VAR_DIR / "models")))
WORKER_DRAIN_TIMEOUT: float = env.float("WORKER_DRAIN_TIMEOUT", default=30.0)
# The largest prefill hand-off (KV cache rows) a decode worker reads; past it, it prefills itself.
HANDOFF_MAX_BYTES: int = env.int("HANDOFF_MAX_BYTES", default=1 << 30)
# Agents: folders whose model folders and .gguf files the admin offers for deployments.
MODEL_DIRS: list[str] = env.list("MODEL_DIRS", default=[])
LOG_DIR = Path(env.str("LOG_DIR", default=str(VAR_DIR / "log")))
# llama.cpp built for this CPU (xllamacpp's sdist, GGML_NATIVE): "auto" builds it in the agent's
# background on first start, tries it against the portable wheel and, where it is faster, workers load
# it from their next start; "on": load a ready build whatever its trial said; "off": the wheel only.
LLAMACPP_NATIVE: str = env.str("LLAMACPP_NATIVE", default="auto")
if LLAMACPP_NATIVE not in ("off", "auto", "on"):
    raise environ.ImproperlyConfigured(f"LLAMACPP_NATIVE={LLAMACPP_NATIVE!r}: choose off, auto or on.")
LLAMACPP_BUILD_DIR = Path(env.str("LLAMACPP_BUILD_DIR", default=str(VAR_DIR / "llamacpp")))
# Shared secret workers require (Authorization: Bearer) on all but /health; empty: none.
WORKER_TOKEN: str | None = env.str("WORKER_TOKEN", default="") or None
# Earlier tokens workers still accept during a rotation (the portal sends WORKER_TOKEN only).
WORKER_TOKEN_FALLBACKS: list[str] = env.list("WORKER_TOKEN_FALLBACKS", default=[])

# Hub organisations whose models a deployment may name (e.g. "HuggingFaceTB,BAAI"); none by default:
# deployments serve the packaged models and the nodes' catalogues only.
FLEET_HUB_ORGS: list[str] = env.list("FLEET_HUB_ORGS", default=[])
# Kubernetes (runkubeagent, deploy export --k8s): the namespace workers run in, their image, and the
# Secret they read DATABASE_URL, WORKER_TOKEN, SECRET_KEY (the workers' own) and REDIS_URL from.
KUBE_NAMESPACE: str = env.str("KUBE_NAMESPACE", default="default")
KUBE_WORKER_IMAGE: str = env.str("KUBE_WORKER_IMAGE", default="modelportal")
KUBE_SECRET: str = env.str("KUBE_SECRET", default="worker-secrets")
# A PersistentVolumeClaim the workers keep their model cache in; empty: an emptyDir per pod.
KUBE_MODEL_CACHE_CLAIM: str = env.str("KUBE_MODEL_CACHE_CLAIM", default="")
# Gateway
GATEWAY_MAX_ATTEMPTS: int = env.int("GATEWAY_MAX_ATTEMPTS", default=3)
GATEWAY_CONNECT_TIMEOUT: float = env.float("GATEWAY_CONNECT_TIMEOUT", default=3.0)
GATEWAY_READ_TIMEOUT: float = env.float("GATEWAY_READ_TIMEOUT", default=120.0)
GATEWAY_MAX_BODY_BYTES: int = env.int("GATEWAY_MAX_BODY_BYTES", default=4 * 1024 * 1024)
API_KEY_CACHE_SECONDS: float = env.float("API_KEY_CACHE_SECONDS", default=5.0)
# Requests one caller (key, app credential, chat user) may have waiting for a busy model at once;
# a key's own max_queued overrides it; 0: no cap.
QUEUE_MAX_PER_CALLER: int = env.int("QUEUE_MAX_PER_CALLER", default=32)
# Usage records are queued and written in batches this often.
USAGE_FLUSH_SECONDS: float = env.float("USAGE_FLUSH_SECONDS", default=0.5)
# With REDIS_URL: usage a portal read from the shared stream and did not acknowledge this long
# ago is taken over by another (its reader died). Well above the time one batch takes to write.
USAGE_CLAIM_SECONDS: float = env.float("USAGE_CLAIM_SECONDS", default=60.0)
WORKER_CACHE_SECONDS: float = env.float("WORKER_CACHE_SECONDS", default=1.0)
# PostgreSQL only: each portal process keeps a psycopg pool of at most this many connections
# (Django's `pool` option) instead of one persistent connection per thread; 0 turns it off.
DATABASE_POOL_SIZE: int = env.int("DATABASE_POOL_SIZE", default=0)
# Raw usage records older than this many days are deleted once rolled up per day; 0: kept forever.
USAGE_RETENTION_DAYS: int = env.int("USAGE_RETENTION_DAYS", default=90)
# Single sign-on (OpenID Connect): on when OIDC_RP_CLIENT_ID is set; the provider's endpoints are named.
OIDC_RP_CLIENT_ID: str = env.str("OIDC_RP_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET: str = env.str("OIDC_RP_CLIENT_SECRET", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT: str = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT: str = env.str("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT: str = env.str("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT: str = env.str("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO: str = env.str("OIDC_RP_SIGN_ALGO", default="RS256")
OIDC_RP_SCOPES: str = env.str("OIDC_RP_SCOPES", default="openid email profile groups")
OIDC_GROUPS_CLAIM: str = env.str("OIDC_GROUPS_CLAIM", default="groups")
# Provider group → portal role ("viewer", "operator", "key manager", "admin"), e.g. "ops=operator,it=admin".
OIDC_ROLE_GROUPS: dict[str, str] = env.dict("OIDC_ROLE_GROUPS", default={})
# A provider group "<prefix><team>" makes the user a member of that (existing) team.
OIDC_TEAM_GROUP_PREFIX: str = env.str("OIDC_TEAM_GROUP_PREFIX", default="team:")
# Off: the admin's password form is refused and only single sign-on logs in (needs OIDC_RP_CLIENT_ID).
PASSWORD_LOGIN: bool = env.bool("PASSWORD_LOGIN", default=True)
# Days the audit trail keeps its entries (pruned hourly by qcluster); 0 keeps every entry.
AUDIT_RETENTION_DAYS: int = env.int("AUDIT_RETENTION_DAYS", default=365)

# Metrics (/metrics)
# Scrapers send "Authorization: Bearer <METRICS_TOKEN>"; empty: /metrics answers loopback clients only.
METRICS_TOKEN: str | None = env.str("METRICS_TOKEN", default="") or None
# A directory the portal processes of one host share, so that /metrics in any of them shows all
# (prometheus-client's multiprocess mode, which reads this variable from the environment itself);
# empty: each process counts alone. Empty it before the portals start.
PROMETHEUS_MULTIPROC_DIR: str | None = env.str("PROMETHEUS_MULTIPROC_DIR", default="") or None

# Signed API (go-infer compatible)
SIGNED_TIMESTAMP_WINDOW: int = env.int("SIGNED_TIMESTAMP_WINDOW", default=300)
SIGNED_MESSAGE_TIMEOUT: float = env.float("SIGNED_MESSAGE_TIMEOUT", default=60.0)
SIGNED_MAX_WORKERS: int = env.int("SIGNED_MAX_WORKERS", default=8)
# Larger bodies are refused (code 9809) before they are parsed.
SIGNED_MAX_BODY_BYTES: int = env.int("SIGNED_MAX_BODY_BYTES", default=1024 * 1024)
SM2_PRIVATE_KEY: str | None = env.str("SM2_PRIVATE_KEY", default=None)

# Chat page
CHAT_ALLOW_ANONYMOUS: bool = env.bool("CHAT_ALLOW_ANONYMOUS", default=False)
# Limits per chat user (or anonymous session), reserved per answer like an API key's; 0: off.
CHAT_USER_RPM: int = env.int("CHAT_USER_RPM", default=0)
CHAT_USER_TPM: int = env.int("CHAT_USER_TPM", default=0)
CHAT_USER_MAX_IN_FLIGHT: int = env.int("CHAT_USER_MAX_IN_FLIGHT", default=0)


# What a worker an agent starts inherits: the settings a worker reads, and the machine's own variables
# (locale, paths, GPUs, thread counts, caches). Never the agent's other secrets: a worker gets a
# SECRET_KEY of its own, and reads no .env.
WORKER_SETTINGS = (
    "DATABASE_URL", "DATABASE_POOL_SIZE", "REDIS_URL", "WORKER_TOKEN", "WORKER_TOKEN_FALLBACKS",
    "HEARTBEAT_INTERVAL", "HEARTBEAT_EXPIRY_INTERVALS", "MODEL_CACHE_DIR", "WORKER_DRAIN_TIMEOUT",
    "PORTAL_VAR_DIR", "LOG_DIR", "LLAMACPP_NATIVE", "LLAMACPP_BUILD_DIR", "LOG_LEVEL", "HANDOFF_MAX_BYTES",
    "GATEWAY_CONNECT_TIMEOUT",
    "GATEWAY_READ_TIMEOUT", "REDIS_TIMEOUT_SECONDS", "DJANGO_SETTINGS_MODULE",
)  # fmt: skip
MACHINE_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
MACHINE_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "HF_", "TRANSFORMERS_", "VLLM_", "OMP_", "MKL_", "TOKENIZERS_")


def worker_environment(secret_key: str) -> dict[str, str]:
    """The environment of a worker process started by an agent, with `secret_key` as its SECRET_KEY."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name in WORKER_SETTINGS or name in MACHINE_VARIABLES or name.startswith(MACHINE_PREFIXES)
    }
    # The resolved database (its default depends on PORTAL_VAR_DIR); .env's values are in os.environ.
    environment |= {"DATABASE_URL": DATABASE_URL, "SECRET_KEY": secret_key, "ENV_FILE": os.devnull}
    return environment
