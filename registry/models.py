"""The data model: workers, served models and aliases, API keys, app credentials, usage."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone


class DispatchPolicy(models.TextChoices):
    LEAST_INFLIGHT = "least_inflight", "Least in flight"
    SHORTEST_QUEUE = "shortest_queue", "Shortest queue"
    LOTTERY = "lottery", "Lottery"
    CACHE_AWARE = "cache_aware", "Cache aware (the worker holding the prompt's prefix)"


class ModelTask(models.TextChoices):
    GENERATE = "generate", "Text generation"
    EMBED = "embed", "Embeddings"


class ServedModel(models.Model):
    """A model name that clients ask for; any number of workers may serve it."""

    name = models.CharField(max_length=200, unique=True)
    task = models.CharField(max_length=16, choices=ModelTask.choices, default=ModelTask.GENERATE)
    dispatch_policy = models.CharField(
        max_length=32, choices=DispatchPolicy.choices, default=DispatchPolicy.LEAST_INFLIGHT
    )
    default_params = models.JSONField(
        default=dict,
        blank=True,
        help_text="Sampling defaults applied when a request leaves them out.",
    )
    enabled = models.BooleanField(default=True)
    queue_timeout = models.FloatField(
        default=30.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(3600.0)],
        help_text="Seconds a request waits in the queue when every worker is busy, then 503; 0: 503 at once.",
    )
    input_price_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        default=Decimal(0),
        validators=[MinValueValidator(Decimal(0))],
        help_text="Dollars per million prompt tokens: what money budgets count.",
    )
    output_price_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        default=Decimal(0),
        validators=[MinValueValidator(Decimal(0))],
        help_text="Dollars per million generated tokens.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelAlias(models.Model):
    """Another name under which a served model is reachable (`gpt-4o-mini` → `smollm2`)."""

    name = models.CharField(max_length=200, unique=True)
    served_model = models.ForeignKey(ServedModel, on_delete=models.CASCADE, related_name="aliases")

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.name} → {self.served_model.name}"


class WorkerStatus(models.TextChoices):
    STARTING = "starting", "Starting"
    ONLINE = "online", "Online"
    DRAINING = "draining", "Draining"
    OFFLINE = "offline", "Offline"


class WorkerIntent(models.TextChoices):
    """What an operator asked of a worker; the worker reads it with each heartbeat."""

    SERVE = "serve", "Serve"
    DRAIN = "drain", "Drain (finish what runs, take nothing new, stay up)"
    REMOVE = "remove", "Remove (drain, exit, delete the row)"


class WorkerKind(models.TextChoices):
    LOCAL = "local", "Our worker (runworker)"
    REMOTE = "remote", "Remote OpenAI-compatible endpoint"


class WorkerQuerySet(models.QuerySet["Worker"]):
    def online(self) -> WorkerQuerySet:
        """Workers that are online and whose heartbeat has not expired."""
        return self.filter(status=WorkerStatus.ONLINE, expires_at__gt=timezone.now())

    def expired(self) -> WorkerQuerySet:
        """Workers marked live whose heartbeat is older than the expiry window."""
        return self.exclude(status=WorkerStatus.OFFLINE).filter(
            Q(expires_at__lte=timezone.now()) | Q(expires_at__isnull=True)
        )


class Worker(models.Model):
    """A process (or a remote endpoint) that serves one or more models over the OpenAI format."""

    identity = models.CharField(
        max_length=255, unique=True, help_text="Stable across restarts: host, address and model."
    )
    kind = models.CharField(max_length=16, choices=WorkerKind.choices, default=WorkerKind.LOCAL)
    address = models.URLField(max_length=500, help_text="Base URL the portal reaches it at.")
    served_models = models.ManyToManyField(ServedModel, related_name="workers", blank=True)
    status = models.CharField(max_length=16, choices=WorkerStatus.choices, default=WorkerStatus.STARTING)
    intent = models.CharField(
        max_length=16,
        choices=WorkerIntent.choices,
        default=WorkerIntent.SERVE,
        help_text="Set by the admin's drain, resume and remove actions; kept across the worker's restarts.",
    )
    backend = models.CharField(max_length=32, blank=True)
    device = models.CharField(max_length=32, blank=True)
    build = models.CharField(
        max_length=64, blank=True, help_text="Which build of the engine, e.g. llama.cpp native avx512."
    )
    model_path = models.CharField(max_length=1000, blank=True)
    role = models.CharField(max_length=16, default="both", help_text="both, prefill or decode.")
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    # Remote endpoints only: the key the portal presents to them.
    remote_api_key = models.CharField(max_length=500, blank=True)

    max_concurrency = models.PositiveIntegerField(default=1)
    max_queue = models.PositiveIntegerField(default=0)
    max_model_len = models.PositiveIntegerField(null=True, blank=True)
    heartbeat_interval = models.FloatField(default=5.0)

    in_flight = models.PositiveIntegerField(default=0)
    queued = models.PositiveIntegerField(default=0)
    tokens_per_second = models.FloatField(default=0.0)
    kv_cache_usage = models.FloatField(
        null=True, blank=True, help_text="Share of the KV cache in use (reserved by running requests)."
    )
    memory_bytes = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Resident memory of the worker process, from its heartbeat."
    )
    prefix_cache_hit_rate = models.FloatField(
        null=True,
        blank=True,
        help_text="Prompt tokens its prefix cache served / prompt tokens, since it started.",
    )
    prefix_cache_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Prompt tokens its prefix cache holds."
    )
    speed = models.FloatField(default=1.0, help_text="Relative weight for lottery dispatch.")

    registered_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(blank=True)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["identity"]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return self.identity

    @property
    def effective_status(self) -> str:
        if self.status in (WorkerStatus.ONLINE, WorkerStatus.DRAINING, WorkerStatus.STARTING) and (
            self.expires_at is None or self.expires_at <= timezone.now()
        ):
            return WorkerStatus.OFFLINE
        return self.status

    @property
    def heartbeat_age(self) -> timedelta | None:
        return None if self.last_heartbeat is None else timezone.now() - self.last_heartbeat


REQUEST_LOG_DAYS = 7  # a request log's days when its team or key leaves them empty


class RequestLogSwitch(models.Model):
    """The opt-in request log of a team or an API key: keep its requests' bodies for some days."""

    log_requests = models.BooleanField(
        default=False,
        help_text="Keep the bodies of its requests and of their answers (never headers or keys), "
        "searchable from the usage page. Off by default: the bodies may hold personal data.",
    )
    request_log_days = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(3650)],
        help_text=f"Days a logged request's bodies are kept, then deleted (no longer than its usage "
        f"record). Empty: {REQUEST_LOG_DAYS}.",
    )

    class Meta:
        abstract = True

    @property
    def log_days(self) -> int:
        """Days its requests' bodies are kept: 0 when its request log is off."""
        return (self.request_log_days or REQUEST_LOG_DAYS) if self.log_requests else 0


class ApiKey(RequestLogSwitch):
    """A client key for the OpenAI-compatible API; only its hash is stored."""

    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    hashed_secret = models.CharField(max_length=128, unique=True, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_keys",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    all_models = models.BooleanField(
        default=False, help_text="Every model, present and future; otherwise only the models below."
    )
    allowed_models = models.ManyToManyField(
        ServedModel,
        blank=True,
        related_name="api_keys",
        help_text="The models this key may use when it is not for all models (none: no model).",
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Reserved per request as prompt + n × max_tokens, settled after."
    )
    max_in_flight = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests this key may have running at once."
    )
    queue_priority = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(9)],
        help_text="0-9: when every worker is busy, this key's requests leave the queue before lower ones.",
    )
    max_queued = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests this key may have waiting in the queue at once (empty: QUEUE_MAX_PER_CALLER).",
    )
    team = models.ForeignKey(
        "teams.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="%(class)ss"
    )
    daily_tokens = models.PositiveBigIntegerField(null=True, blank=True, help_text="This key's own budget.")
    monthly_tokens = models.PositiveBigIntegerField(null=True, blank=True, help_text="This key's own budget.")
    monthly_budget_usd = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="This key's own dollars a month."
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


# What an appId may look like; the signed API refuses any other before a lookup.
APP_ID_RULE = "1 to 128 of A-Z a-z 0-9 _ . -"
APP_ID_PATTERN = r"\A[A-Za-z0-9_.\-]{1,128}\Z"


class AppCredential(models.Model):
    """An app id and secret for the signed (go-infer compatible) API."""

    app_id = models.CharField(
        max_length=128,
        unique=True,
        validators=[RegexValidator(APP_ID_PATTERN, f"An appId is {APP_ID_RULE}.")],
        help_text=f"{APP_ID_RULE} (go-infer's are 32 hex digits).",
    )
    name = models.CharField(max_length=200, blank=True)
    secret_ciphertext = models.TextField(editable=False, help_text="The secret, encrypted at rest.")
    sm2_public_key = models.CharField(
        max_length=200,
        blank=True,
        help_text="Uncompressed SM2 public key in hex (128 or 130 chars).",
    )
    allow_plain = models.BooleanField(default=False, help_text="Accept signType=plain (no signature).")
    allowed_pipelines = models.JSONField(default=list, blank=True, help_text="Empty means every pipeline.")
    enabled = models.BooleanField(default=True)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Reserved per request as prompt + max_tokens, settled after."
    )
    max_in_flight = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests this app may have running at once."
    )
    team = models.ForeignKey(
        "teams.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="%(class)ss"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["app_id"]

    def __str__(self) -> str:
        return self.app_id


class UsageStatus(models.TextChoices):
    OK = "ok", "OK"
    ERROR = "error", "Error"
    CANCELLED = "cancelled", "Cancelled"


class UsageRecord(models.Model):
    """One request through the portal: who, which model and worker, tokens and timings."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    request_id = models.CharField(max_length=64)
    source = models.CharField(max_length=16, default="api", help_text="api, signed or chat.")
    endpoint = models.CharField(max_length=64, blank=True)
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    app_credential = models.ForeignKey(AppCredential, null=True, blank=True, on_delete=models.SET_NULL)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    team = models.ForeignKey("teams.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model_name = models.CharField(max_length=200)
    served_model = models.ForeignKey(ServedModel, null=True, blank=True, on_delete=models.SET_NULL)
    worker = models.ForeignKey(Worker, null=True, blank=True, on_delete=models.SET_NULL)
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(
        default=0, help_text="Prompt tokens the worker's prefix cache served."
    )
    completion_tokens = models.PositiveIntegerField(default=0)
    route = models.CharField(max_length=200, blank=True, help_text="Why dispatch chose this worker.")
    time_to_first_token_ms = models.FloatField(null=True, blank=True)
    total_time_ms = models.FloatField(null=True, blank=True)
    streamed = models.BooleanField(default=False, help_text="Answered as a stream of events.")
    status = models.CharField(max_length=16, choices=UsageStatus.choices, default=UsageStatus.OK)
    status_code = models.PositiveSmallIntegerField(default=200)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One record per request: a batch retried after a partial write, or a stream entry
            # delivered twice, is skipped by the database itself (inserts ignore the conflict).
            models.UniqueConstraint(
                fields=["request_id"], condition=~Q(request_id=""), name="usage_record_request_id_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_name} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RequestLog(models.Model):
    """The bodies of one request whose team or key keeps a request log (opt-in), beside its usage record.

    The request as the client sent its JSON (no header, so no key), and the
    answer's text: a stream's assembled from its chunks; an embedding's
    vectors are not kept. Deleted at `expires_at` by the hourly prune job,
    and with its usage record.
    """

    usage_record = models.OneToOneField(UsageRecord, on_delete=models.CASCADE, related_name="log")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField(db_index=True)
    request_body = models.TextField(help_text="The request's JSON, as the client sent it.")
    response_text = models.TextField(blank=True, help_text="The answer's text (a stream's, assembled).")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"log of {self.usage_record_id}"


class UsageRollupDay(models.Model):
    """Which UTC days `UsageDaily` covers, and whether a day is final.

    A day that is not final is recomputed from its raw records on every roll-up.
    A final day is never recomputed (its raw records may be partly pruned);
    records written for it later are added to it. Every raw record of a final
    day up to `last_record_id` is in the rollup, so the prune may delete those.
    """

    day = models.DateField(unique=True)
    final = models.BooleanField(default=False)
    last_record_id = models.BigIntegerField(
        default=0, help_text="Every raw record of this day up to this id is counted in its rollup."
    )
    records = models.PositiveBigIntegerField(default=0, help_text="Raw records counted in the rollup.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.day} ({'final' if self.final else 'provisional'})"


class UsageDayRollup(models.Model):
    """What every daily usage rollup row holds: its UTC day, source and model, and the counters.

    Sums and counts rather than averages, so that days and groups add up.
    """

    day = models.DateField()
    source = models.CharField(max_length=16)
    model_name = models.CharField(max_length=200)
    requests = models.PositiveIntegerField(default=0)
    ok = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    ttft_ms_sum = models.FloatField(default=0)
    ttft_count = models.PositiveIntegerField(default=0)
    total_time_ms_sum = models.FloatField(default=0)
    total_time_count = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} {self.source} {self.model_name}: {self.requests} requests"


def _ranked_by(field: str) -> models.Index:
    """An index that answers "the top groups of `field` over these days" without reading the table.

    It leads with the day, the range every page asks for, so that SQLite picks
    it before any statistics exist; only rows with the group are in it.
    """
    return models.Index(
        fields=["day", field, "requests", "prompt_tokens", "completion_tokens"],
        condition=models.Q(**{f"{field}__isnull": False}),
        name=f"usage_daily_top_{field}",
    )


class UsageDaily(UsageDayRollup):
    """Usage per UTC day, source, model, key, app credential, user and team: the charts' and exports' source.

    The key, credential and user are ids that outlive their rows (no database
    constraint, nothing done on delete): a deleted key's history stays its own
    instead of merging into the "no key" row, and a final day is never rewritten.
    """

    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    app_credential = models.ForeignKey(
        AppCredential,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    team = models.ForeignKey(
        "teams.Team",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )

    class Meta:
        ordering = ["-day", "model_name"]
        verbose_name_plural = "usage per day"
        constraints = [
            # NULL ids coalesce to 0: one "no key" row per group on SQLite and PostgreSQL alike.
            models.UniqueConstraint(
                "day",
                "source",
                "model_name",
                Coalesce("api_key", 0, output_field=models.BigIntegerField()),
                Coalesce("app_credential", 0, output_field=models.BigIntegerField()),
                Coalesce("user", 0, output_field=models.BigIntegerField()),
                Coalesce("team", 0, output_field=models.BigIntegerField()),
                name="usage_daily_one_row_per_group_and_team",
            )
        ]
        indexes = [
            models.Index(fields=["model_name", "day"], name="usage_daily_model_day"),
            _ranked_by("api_key"),
            _ranked_by("app_credential"),
            _ranked_by("user"),
            _ranked_by("team"),
        ]


class UsageDailyTotal(UsageDayRollup):
    """`UsageDaily` summed over keys, app credentials and users: one row per UTC day, source and model.

    The console's totals and per-model series read these few rows instead of
    one row per key; the roll-up writes both in the same transaction.
    """

    class Meta:
        ordering = ["-day", "model_name"]
        constraints = [
            models.UniqueConstraint("day", "source", "model_name", name="usage_daily_total_one_row_per_group")
        ]
