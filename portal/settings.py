"""Django settings for the model portal; values come from `portal.env`."""

import environ
from django.core.exceptions import ImproperlyConfigured

from portal import env

BASE_DIR = env.BASE_DIR
DEBUG = env.DEBUG

# The value .env.example ships with: a key everyone can read is no key.
PLACEHOLDER_SECRET_KEY = "change-me"

if DEBUG:
    SECRET_KEY = env.SECRET_KEY or "insecure-development-key-set-SECRET_KEY-in-production"
elif not env.SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (see .env.example).")
elif env.SECRET_KEY == PLACEHOLDER_SECRET_KEY or len(env.SECRET_KEY) < 16:
    raise ImproperlyConfigured(
        "SECRET_KEY is the .env.example placeholder or shorter than 16 characters; set a random one, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'."
    )
else:
    SECRET_KEY = env.SECRET_KEY

ALLOWED_HOSTS = env.ALLOWED_HOSTS
CSRF_TRUSTED_ORIGINS = env.CSRF_TRUSTED_ORIGINS
# CORS for /v1 only (django-cors-headers, in API_MIDDLEWARE): a browser app on another origin may call it
# with an API key; a preflight is answered by the middleware, before any authentication.
CORS_URLS_REGEX = r"^/v1/"
CORS_ALLOW_ALL_ORIGINS = "*" in env.CORS_ALLOWED_ORIGINS
CORS_ALLOWED_ORIGINS = [] if CORS_ALLOW_ALL_ORIGINS else env.CORS_ALLOWED_ORIGINS
CORS_ALLOW_CREDENTIALS = env.CORS_ALLOW_CREDENTIALS
if CORS_ALLOW_ALL_ORIGINS and CORS_ALLOW_CREDENTIALS:
    raise ImproperlyConfigured(
        "CORS_ALLOW_CREDENTIALS=true with CORS_ALLOWED_ORIGINS=*: credentials are never allowed to any "
        "origin; name the origins instead."
    )
CORS_EXPOSE_HEADERS = ["X-Request-Id", "Retry-After"]
CORS_PREFLIGHT_MAX_AGE = 600
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.SECURE_COOKIES
if env.SECURE_PROXY_SSL_HEADER:
    # Django reads the header as it appears in META: X-Forwarded-Proto -> HTTP_X_FORWARDED_PROTO.
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + env.SECURE_PROXY_SSL_HEADER.upper().replace("-", "_"), "https")
SECURE_SSL_REDIRECT = env.SECURE_SSL_REDIRECT
SECURE_HSTS_SECONDS = env.SECURE_HSTS_SECONDS
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.SECURE_HSTS_INCLUDE_SUBDOMAINS
SECURE_HSTS_PRELOAD = env.SECURE_HSTS_PRELOAD

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's files, served by the portal: /api/docs/ works offline.
    "drf_spectacular_sidecar",
    "django_q",
    "registry",
    "teams",
    "mozilla_django_oidc",
    "fleet",
    # Before channels: our `runworker` must win over Channels' own.
    "inference",
    "channels",
    "portal",
    "portal.chat",
    "portal.signed",
    # The console (/admin/console/): its static files (dashboard script, vendored Chart.js).
    "portal.console",
    # Last: its ready() wraps the admin actions of the models the apps above registered.
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit.middleware.AdminActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# The `/v1` API runs with this shorter list (portal/handlers.py): no sessions, CSRF or messages.
API_MIDDLEWARE: list[str] = ["corsheaders.middleware.CorsMiddleware"]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database(url: str) -> dict:
    config = environ.Env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        env.VAR_DIR.mkdir(parents=True, exist_ok=True)
        # WAL lets the portal read while a worker writes its heartbeat;
        # IMMEDIATE transactions fail fast on a lock instead of deadlocking.
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
        # A file, not memory, so that worker processes started by tests share it.
        config["TEST"] = {"NAME": str(env.VAR_DIR / "test-portal.sqlite3")}
    config.setdefault("CONN_HEALTH_CHECKS", True)  # a connection the database closed is replaced
    if config["ENGINE"] == "django.db.backends.postgresql" and env.DATABASE_POOL_SIZE > 0:
        # Under ASGI, threads come and go (sync_to_async, the usage writer): a pool bounds the
        # connections per process and hands them back after each query block. It needs
        # CONN_MAX_AGE 0; with health checks, the pool checks a connection before handing it out.
        pool = {"min_size": 1, "max_size": env.DATABASE_POOL_SIZE, "timeout": 10}
        config.setdefault("OPTIONS", {})["pool"] = pool
        config["CONN_MAX_AGE"] = 0
        return config
    # Reuse connections: opening one per request costs more than the request's own queries.
    config.setdefault("CONN_MAX_AGE", 60)
    return config


DATABASES = {"default": _database(env.DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if env.REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [env.REDIS_URL]},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env.REDIS_URL,
            # Bounded: the registry version is read on the request path.
            "OPTIONS": {
                "socket_timeout": env.REDIS_TIMEOUT_SECONDS,
                "socket_connect_timeout": env.REDIS_TIMEOUT_SECONDS,
            },
        }
    }
    Q_CLUSTER = {
        "name": "portal",
        "workers": 2,
        "timeout": 600,
        "retry": 900,
        "redis": env.REDIS_URL,
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    Q_CLUSTER = {"name": "portal", "workers": 2, "timeout": 600, "retry": 900, "orm": "default"}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.VAR_DIR / "static"
SERVE_STATIC = env.SERVE_STATIC
LOGIN_URL = "/admin/login/"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Model portal API",
    "DESCRIPTION": "OpenAI-compatible inference API and go-infer compatible signed API.",
    "VERSION": "1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # One operation per signed pipeline, each with the `data` its pipeline declares.
    "PREPROCESSING_HOOKS": ["portal.signed.schema.one_operation_per_pipeline"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.LOG_LEVEL},
    "loggers": {"httpx2": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}

# Portal-specific settings, read at call time through django.conf.settings.
HEARTBEAT_INTERVAL = env.HEARTBEAT_INTERVAL
HEARTBEAT_EXPIRY_INTERVALS = env.HEARTBEAT_EXPIRY_INTERVALS
MODEL_CACHE_DIR = env.MODEL_CACHE_DIR
WORKER_DRAIN_TIMEOUT = env.WORKER_DRAIN_TIMEOUT
HANDOFF_MAX_BYTES = env.HANDOFF_MAX_BYTES
MODEL_DIRS = env.MODEL_DIRS
LOG_DIR = env.LOG_DIR
LLAMACPP_NATIVE = env.LLAMACPP_NATIVE
LLAMACPP_BUILD_DIR = env.LLAMACPP_BUILD_DIR
WORKER_TOKEN = env.WORKER_TOKEN
WORKER_TOKEN_FALLBACKS = env.WORKER_TOKEN_FALLBACKS
GATEWAY_MAX_ATTEMPTS = env.GATEWAY_MAX_ATTEMPTS
GATEWAY_CONNECT_TIMEOUT = env.GATEWAY_CONNECT_TIMEOUT
FLEET_HUB_ORGS = env.FLEET_HUB_ORGS
KUBE_NAMESPACE = env.KUBE_NAMESPACE
KUBE_WORKER_IMAGE = env.KUBE_WORKER_IMAGE
KUBE_SECRET = env.KUBE_SECRET
KUBE_MODEL_CACHE_CLAIM = env.KUBE_MODEL_CACHE_CLAIM
GATEWAY_READ_TIMEOUT = env.GATEWAY_READ_TIMEOUT
GATEWAY_MAX_BODY_BYTES = env.GATEWAY_MAX_BODY_BYTES
DATA_UPLOAD_MAX_MEMORY_SIZE = env.GATEWAY_MAX_BODY_BYTES
API_KEY_CACHE_SECONDS = env.API_KEY_CACHE_SECONDS
QUEUE_MAX_PER_CALLER = env.QUEUE_MAX_PER_CALLER
# Where the limits' counts live: Redis when set (shared by every portal), else in-process.
REDIS_URL = env.REDIS_URL
REDIS_TIMEOUT_SECONDS = env.REDIS_TIMEOUT_SECONDS
PORTAL_COUNT = env.PORTAL_COUNT
WORKER_CACHE_SECONDS = env.WORKER_CACHE_SECONDS
USAGE_FLUSH_SECONDS = env.USAGE_FLUSH_SECONDS
USAGE_CLAIM_SECONDS = env.USAGE_CLAIM_SECONDS
USAGE_RETENTION_DAYS = env.USAGE_RETENTION_DAYS
AUDIT_RETENTION_DAYS = env.AUDIT_RETENTION_DAYS

# Single sign-on (mozilla-django-oidc): on with OIDC_RP_CLIENT_ID; teams.sso maps the groups claim.
SSO_ENABLED = bool(env.OIDC_RP_CLIENT_ID)
OIDC_RP_CLIENT_ID = env.OIDC_RP_CLIENT_ID
OIDC_RP_CLIENT_SECRET = env.OIDC_RP_CLIENT_SECRET
OIDC_OP_AUTHORIZATION_ENDPOINT = env.OIDC_OP_AUTHORIZATION_ENDPOINT
OIDC_OP_TOKEN_ENDPOINT = env.OIDC_OP_TOKEN_ENDPOINT
OIDC_OP_USER_ENDPOINT = env.OIDC_OP_USER_ENDPOINT
OIDC_OP_JWKS_ENDPOINT = env.OIDC_OP_JWKS_ENDPOINT
OIDC_RP_SIGN_ALGO = env.OIDC_RP_SIGN_ALGO
OIDC_RP_SCOPES = env.OIDC_RP_SCOPES
OIDC_GROUPS_CLAIM = env.OIDC_GROUPS_CLAIM
OIDC_ROLE_GROUPS = env.OIDC_ROLE_GROUPS
OIDC_TEAM_GROUP_PREFIX = env.OIDC_TEAM_GROUP_PREFIX
PASSWORD_LOGIN = env.PASSWORD_LOGIN
LOGIN_REDIRECT_URL = "/admin/"
if set(OIDC_ROLE_GROUPS.values()) - {"viewer", "operator", "key manager", "admin"}:
    raise ImproperlyConfigured("OIDC_ROLE_GROUPS maps to viewer, operator, key manager or admin only.")
if not PASSWORD_LOGIN and not SSO_ENABLED:
    raise ImproperlyConfigured(
        "PASSWORD_LOGIN=false needs single sign-on (OIDC_RP_CLIENT_ID and the OIDC_OP_*)."
    )
AUTHENTICATION_BACKENDS = [
    *(["teams.sso.PortalOIDCBackend"] if SSO_ENABLED else []),
    *(["django.contrib.auth.backends.ModelBackend"] if PASSWORD_LOGIN else []),
]
METRICS_TOKEN = env.METRICS_TOKEN
PROMETHEUS_MULTIPROC_DIR = env.PROMETHEUS_MULTIPROC_DIR
SIGNED_TIMESTAMP_WINDOW = env.SIGNED_TIMESTAMP_WINDOW
SIGNED_MESSAGE_TIMEOUT = env.SIGNED_MESSAGE_TIMEOUT
SIGNED_MAX_WORKERS = env.SIGNED_MAX_WORKERS
SIGNED_MAX_BODY_BYTES = env.SIGNED_MAX_BODY_BYTES
SM2_PRIVATE_KEY = env.SM2_PRIVATE_KEY
CHAT_ALLOW_ANONYMOUS = env.CHAT_ALLOW_ANONYMOUS
CHAT_USER_RPM = env.CHAT_USER_RPM
CHAT_USER_TPM = env.CHAT_USER_TPM
CHAT_USER_MAX_IN_FLIGHT = env.CHAT_USER_MAX_IN_FLIGHT
# Signed-API pipelines by dotted path; a deployment appends its own.
SIGNED_PIPELINES = [
    "portal.signed.pipelines.chat.ChatPipeline",
    "portal.signed.pipelines.embedding.EmbeddingPipeline",
    "portal.signed.pipelines.echo.EchoPipeline",
]
