"""Nodes (machines with an agent), deployments (what an operator wants served) and their instances.

The scheduler (`fleet.services.scheduler`) turns a deployment into instances,
each placed on a node; the node's agent (`runagent`) makes each instance a
running `runworker` process and writes back what became of it.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone


class NodeQuerySet(models.QuerySet["Node"]):
    def online(self) -> NodeQuerySet:
        return self.filter(expires_at__gt=timezone.now())


class Node(models.Model):
    """A machine whose agent starts and watches workers; it heartbeats like a worker."""

    name = models.CharField(max_length=255, unique=True, help_text="The agent's --name (default: host name).")
    address = models.CharField(max_length=255, help_text="Host others reach this node's workers at.")
    labels = models.JSONField(default=dict, blank=True, help_text='From --labels, e.g. {"zone": "a"}.')
    cpus = models.PositiveIntegerField(default=0)
    memory_bytes = models.PositiveBigIntegerField(default=0, help_text="Total memory.")
    available_memory_bytes = models.PositiveBigIntegerField(
        default=0, help_text="Free at the last heartbeat."
    )
    gpus = models.JSONField(default=list, blank=True, help_text="[{name, memory_bytes}] from nvidia-smi.")
    catalogue = models.JSONField(
        default=list, blank=True, help_text="Models found on this node: [{path, bytes}]."
    )
    agent_pid = models.IntegerField(null=True, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_online(self) -> bool:
        return self.expires_at is not None and self.expires_at > timezone.now()


class Backend(models.TextChoices):
    AUTO = "auto", "Auto (llama.cpp for GGUF on a CPU, else transformers)"
    LLAMACPP = "llamacpp", "llama.cpp"
    TRANSFORMERS = "transformers", "transformers"
    VLLM = "vllm", "vLLM"
    CANNED = "canned", "Canned (a test engine)"


class Dtype(models.TextChoices):
    AUTO = "auto", "Auto (per engine)"
    KEEP = "keep", "Keep (llama.cpp: the GGUF as it is)"
    FLOAT32 = "float32", "float32"
    FLOAT16 = "float16", "float16"
    BFLOAT16 = "bfloat16", "bfloat16"


SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


def validate_model_names(value: str) -> None:
    """Comma-separated served names: letters, digits and . _ : / @ + - (never an option)."""
    for name in (n.strip() for n in value.split(",")):
        if name and not SERVED_NAME.match(name):
            raise ValidationError(f"{name!r} is not a served name: letters, digits and . _ : / @ + - only.")


def validate_model_path(value: str) -> None:
    """A path or name, never an option: no leading '-', printable, no surrounding spaces."""
    if value.startswith("-") or not value.isprintable() or value != value.strip():
        raise ValidationError(
            "A model path is a packaged name, a path or a hub id; it cannot start with '-'."
        )


class Placement(models.TextChoices):
    SPREAD = "spread", "Spread (replicas on different nodes where possible)"
    PACK = "pack", "Pack (fill one node before the next)"


class RunsOn(models.TextChoices):
    AGENTS = "agents", "Node agents (runagent)"
    KUBERNETES = "kubernetes", "Kubernetes (runkubeagent)"


# The node row that stands for a namespace of a cluster: its replicas are pods, not agent processes.
KUBE_NODE_PREFIX = "kubernetes/"


class Deployment(models.Model):
    """A model an operator wants served by `replicas` workers; the fleet makes it so.

    With `min_replicas` and `max_replicas` set the scheduler sets `replicas`
    from the load (`fleet.autoscale`); without them `replicas` is fixed.
    """

    name = models.CharField(
        max_length=100,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9._-]*$", "Lower-case letters, digits, '.', '_', '-'.")],
        help_text="Also the served model name unless model names are given.",
    )
    model_names = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_model_names],
        help_text="Comma-separated served names (default: the deployment's name).",
    )
    model_path = models.CharField(
        max_length=1000,
        validators=[validate_model_path],
        help_text="A packaged model name, a model folder or .gguf file from the nodes' catalogue, "
        "or a hub id of an allowed organisation (FLEET_HUB_ORGS).",
    )
    backend = models.CharField(max_length=16, choices=Backend.choices, default=Backend.AUTO)
    replicas = models.PositiveIntegerField(
        default=1,
        validators=[MaxValueValidator(64)],
        help_text="Fixed, or (autoscaled) the count the scheduler chose last.",
    )
    min_replicas = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(64)],
        help_text="Autoscaling: at least this many (0: to zero after idle seconds). Blank: fixed replicas.",
    )  # fmt: skip
    max_replicas = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="Autoscaling: at most this many. Blank: fixed replicas.",
    )  # fmt: skip
    idle_seconds = models.PositiveIntegerField(
        default=600, help_text="With min replicas 0: no request this long drains the last replica."
    )
    target_queue_wait = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.0)],
        help_text="Seconds: a queue that waited longer than this for scale-up-after seconds adds replicas.",
    )  # fmt: skip
    target_in_flight = models.FloatField(
        default=0.8, validators=[MinValueValidator(0.05), MaxValueValidator(1.0)],
        help_text="Share of the replicas' slots (max concurrency) in flight above which replicas are added.",
    )  # fmt: skip
    scale_up_after = models.PositiveIntegerField(default=15, help_text="Seconds of high load before adding.")
    cooldown = models.PositiveIntegerField(
        default=60, help_text="Seconds of low load before removing replicas, one at a time."
    )
    priority = models.IntegerField(
        default=0, help_text="Higher keeps its memory: an idle lower-priority deployment is evicted first."
    )
    cold_start_timeout = models.PositiveIntegerField(
        default=120,
        validators=[MaxValueValidator(3600)],
        help_text="Seconds a request waits for this model's first replica (a cold start), then 503.",
    )
    high_load_since = models.DateTimeField(null=True, blank=True, editable=False)
    low_load_since = models.DateTimeField(null=True, blank=True, editable=False)
    scaled_at = models.DateTimeField(null=True, blank=True, editable=False)
    role = models.CharField(
        max_length=16,
        choices=[
            ("both", "Both"),
            ("prefill", "Prefill (hands off to decode workers)"),
            ("decode", "Decode"),
        ],
        default="both",
    )
    max_concurrency = models.PositiveIntegerField(default=16, validators=[MinValueValidator(1)])
    dtype = models.CharField(
        max_length=16, choices=Dtype.choices, default=Dtype.AUTO, help_text="runworker --dtype."
    )
    threads = models.PositiveIntegerField(null=True, blank=True, help_text="runworker --threads.")
    max_model_len = models.PositiveIntegerField(null=True, blank=True)
    extra_args = models.CharField(
        max_length=1000,
        blank=True,
        help_text="More runworker options from an allow-list (how a worker serves, never where or as whom), "
        "e.g. --max-queue 128.",
    )
    runs_on = models.CharField(
        max_length=16,
        choices=RunsOn.choices,
        default=RunsOn.AGENTS,
        help_text="Who realises the replicas: the node agents, or runkubeagent as a Kubernetes Deployment.",
    )
    placement = models.CharField(max_length=16, choices=Placement.choices, default=Placement.SPREAD)
    required_labels = models.JSONField(
        default=dict, blank=True, help_text='Node labels a replica needs, e.g. {"gpu": "a100"}.'
    )
    memory_per_replica = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Bytes; blank: estimated from the model's files."
    )
    generation = models.PositiveIntegerField(
        default=1, editable=False, help_text="Raised when the options change: replicas roll to it."
    )
    pending_reason = models.CharField(max_length=500, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def served_names(self) -> list[str]:
        return [n.strip() for n in self.model_names.split(",") if n.strip()] or [self.name]

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None and self.max_replicas is not None

    @property
    def cold(self) -> bool:
        """Scaled to zero, starting again on a request."""
        return self.autoscaled and self.replicas == 0

    def clean(self) -> None:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValidationError("Autoscaling needs both min and max replicas (or neither: fixed replicas).")
        if self.autoscaled and self.min_replicas > self.max_replicas:  # type: ignore[operator]
            raise ValidationError({"min_replicas": "Min replicas cannot exceed max replicas."})


class ScaleAction(models.TextChoices):
    UP = "up", "Scaled up"
    DOWN = "down", "Scaled down"
    ZERO = "zero", "Scaled to zero"
    COLD_START = "cold_start", "Cold start"
    EVICTED = "evicted", "Evicted"
    BOUNDS = "bounds", "Bounds changed"


class DeploymentEvent(models.Model):
    """One decision of the autoscaler, with its reason: what the admin and the dashboard show."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=16, choices=ScaleAction.choices)
    replicas_before = models.PositiveIntegerField()
    replicas_after = models.PositiveIntegerField()
    reason = models.CharField(max_length=500)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.deployment.name}: {self.replicas_before} → {self.replicas_after} ({self.reason})"


class ModelDemand(models.Model):
    """What one portal process sees of one model's load, written at most once a second.

    Portals and agents are different processes: the scheduler reads the load
    here (rows of every portal, fresh ones only) to scale, start a cold model
    and leave a serving one alone.
    """

    model = models.CharField(max_length=200)
    source = models.CharField(max_length=200, help_text="The portal process (host:pid).")
    waiting = models.PositiveIntegerField(default=0, help_text="Requests in the queue, no worker yet.")
    waiting_since = models.DateTimeField(null=True, blank=True, help_text="Arrival of the oldest waiting.")
    in_flight = models.PositiveIntegerField(
        default=0, help_text="Requests this portal handles, waiting ones included."
    )
    last_request_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "source"], name="one_demand_per_portal")]

    def __str__(self) -> str:
        return f"{self.model} @ {self.source}: {self.waiting} waiting, {self.in_flight} in flight"


class InstanceState(models.TextChoices):
    PENDING = "pending", "Pending (placed, not started)"
    STARTING = "starting", "Starting (loading the model)"
    READY = "ready", "Ready"
    CRASHED = "crashed", "Crashed (restarting after a back-off)"
    FAILED = "failed", "Failed (crashed too often; restart the deployment)"
    STOPPING = "stopping", "Stopping (draining)"


class Instance(models.Model):
    """One replica of a deployment on one node: the agent's `runworker` process for it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="instances")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="instances")
    generation = models.PositiveIntegerField()
    wanted = models.BooleanField(default=True, help_text="False: the agent drains and stops it.")
    state = models.CharField(max_length=16, choices=InstanceState.choices, default=InstanceState.PENDING)
    memory_bytes = models.PositiveBigIntegerField(default=0, help_text="What placement reserved for it.")
    port = models.PositiveIntegerField(null=True, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    process_start = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The process's start time (clock ticks after boot): pids are reused."
    )
    command = models.JSONField(default=list, blank=True, help_text="The worker's exact argv.")
    pod = models.CharField(max_length=253, blank=True, help_text="Kubernetes: the pod this replica is.")
    restarts = models.PositiveIntegerField(default=0)
    crashes_in_a_row = models.PositiveIntegerField(default=0)
    next_start_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    detail = models.CharField(max_length=500, blank=True, help_text="Loading progress or the last exit.")
    log_path = models.CharField(max_length=1000, blank=True)
    log_tail = models.TextField(blank=True, help_text="The log's last lines at the last crash.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["deployment", "id"]
        indexes = [models.Index(fields=["node", "wanted"])]

    def __str__(self) -> str:
        return self.identity

    @property
    def identity(self) -> str:
        """The worker's --worker-id: its Worker row and its process's command line carry it.

        A pod's worker cannot know the row's id (one template makes every pod): it names its pod.
        """
        return f"{self.deployment.name}/{self.pod or self.pk}@{self.node.name}"


class SchedulerLock(models.Model):
    """One row that every scheduler run updates first: runs on any number of agents take turns.

    It also holds the Kubernetes backend's lease: one `runkubeagent` of several acts at a time.
    """

    last_run_at = models.DateTimeField(null=True, blank=True)
    kube_leader = models.CharField(max_length=255, blank=True, help_text="The runkubeagent acting now.")
    kube_lease_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"scheduler run at {self.last_run_at}"
