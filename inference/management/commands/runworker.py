"""`manage.py runworker --model-path PATH`: load one model and serve it in the OpenAI format.

Overrides Channels' `runworker` (INSTALLED_APPS lists `inference` first).
"""

from __future__ import annotations

import json
import os
import socket
from argparse import ArgumentParser, BooleanOptionalAction
from typing import Any

from django.conf import settings
from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.engines.base import Engine, EngineConfig
from inference.errors import EngineError
from inference.worker.serving import WorkerContext


def build_engine(config: EngineConfig, backend: str) -> Engine:
    """Create the engine through `inference.engines.create_engine`; raise CommandError in one line."""
    from inference.engines import create_engine

    try:
        return create_engine(config, backend=backend)
    except EngineError as exc:
        raise CommandError(str(exc)) from None


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a worker token: it would be an open model server."""
    from inference.worker.auth import is_loopback

    if not token and not is_loopback(host):
        raise CommandError(
            f"Refusing to serve on {host} without a worker token: set WORKER_TOKEN (or --worker-token), "
            "or bind 127.0.0.1."
        )


# vLLM's serving knobs, under vLLM's own option names; only `--backend vllm` takes them.
VLLM_OPTIONS = (
    "tensor_parallel_size",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "quantization",
    "enable_prefix_caching",
    "kv_transfer_config",
)


def vllm_knobs(options: dict[str, Any]) -> dict[str, Any]:
    """The vLLM options given; CommandError when another backend is asked for or one is malformed."""
    given = {key: options[key] for key in VLLM_OPTIONS if options.get(key) is not None}
    if given and options["backend"] != "vllm":
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise CommandError(f"{flags}: vLLM options; add --backend vllm.")
    if "kv_transfer_config" in given:
        try:
            config = json.loads(given["kv_transfer_config"])
        except ValueError as exc:
            raise CommandError(f"--kv-transfer-config is not JSON: {exc}.") from None
        if not isinstance(config, dict) or not {"kv_connector", "kv_role"} <= config.keys():
            raise CommandError('--kv-transfer-config needs an object with "kv_connector" and "kv_role".')
        given["kv_transfer_config"] = config
    return given


def prefix_cache_mb(options: dict[str, Any]) -> int | None:
    given = options.get("prefix_cache_mb")
    if given is None:
        return None  # the engine's own default
    if options["backend"] in ("vllm", "canned"):
        raise CommandError(
            "--prefix-cache-mb is for the transformers and llama.cpp engines (vLLM: --enable-prefix-caching)."
        )
    if given < 0:
        raise CommandError("--prefix-cache-mb must be 0 or more.")
    return int(given)


def engine_config(options: dict[str, Any]) -> EngineConfig:
    extra: dict[str, Any] = {"threads": options["threads"]}
    if options["backend"] == "canned":
        extra = {"token_delay": options["canned_token_delay"], "task": options["canned_task"]}
    elif options["backend"] == "vllm":
        extra = vllm_knobs(options)
    else:
        vllm_knobs(options)  # refuses a vLLM option given to another backend
    values: dict[str, Any] = {
        "model_path": options["model_path"],
        "device": options["device"],
        "dtype": options["dtype"],
        "max_concurrency": options["max_concurrency"],
        "max_queue": options["max_queue"],
        "queue_timeout": options["queue_timeout"],
        "max_model_len": options["max_model_len"],
        "seed": options["seed"],
        "cache_dir": str(settings.MODEL_CACHE_DIR),
        "prefix_cache_mb": prefix_cache_mb(options),
        "extra": extra,
    }
    return EngineConfig(**values)


class Command(BaseCommand):
    # The models' checks only: a worker serves no Django URL, and checking the URL conf imports
    # every view of the portal (0.8 s of each start).
    requires_system_checks = [Tags.models]
    help = "Load one model and serve it over HTTP in the OpenAI wire format, registered in the portal."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # No abbreviations: `--hos` must never mean `--host` (agents build argvs from an allow-list).
        return super().create_parser(prog_name, subcommand, allow_abbrev=False, **kwargs)

    def add_arguments(self, parser: ArgumentParser) -> None:
        add = parser.add_argument
        add("--model-path", required=True, help="HF folder, GGUF file, packaged model name or hub id.")
        add(
            "--model-names",
            "--served-model-name",
            default="",
            help="Comma-separated served names (default: from the path).",
        )
        add("--host", default="127.0.0.1")
        add("--port", type=int, default=0, help="0 picks a free port.")
        add("--worker-address", default=None, help="URL others reach this worker at (checked at start).")
        add("--worker-id", default=None, help="Stable identity (default: hostname@address).")
        add(
            "--worker-token",
            default=None,
            help="Secret callers must send as a Bearer token (default: WORKER_TOKEN). "
            "Required to bind a non-loopback address.",
        )
        add("--device", choices=["cpu", "cuda", "auto"], default="auto")
        add(
            "--dtype",
            default="auto",
            help="auto, float32, float16 or bfloat16 (llama.cpp: also keep, the GGUF as it is).",
        )
        add("--backend", choices=["auto", "llamacpp", "transformers", "vllm", "canned"], default="auto")
        add(
            "--role",
            choices=["both", "prefill", "decode"],
            default="both",
            help="prefill: make hand-offs for decode workers; decode: continue from them (default both).",
        )
        add("--threads", type=int, default=None, help="CPU threads for the model (default: per engine).")
        add("--max-concurrency", "--max-num-seqs", type=int, default=16, help="Sequences generating at once.")
        add("--max-queue", type=int, default=64, help="Requests waiting for a slot; more get 503.")
        add("--queue-timeout", type=float, default=60.0, help="Seconds a request may wait for a slot.")
        add("--stream-interval", type=int, default=1, help="Tokens per streamed chunk.")
        add("--heartbeat-interval", type=float, default=None, help="Seconds (default HEARTBEAT_INTERVAL).")
        add("--no-register", action="store_true", help="Serve without a row in the database.")
        add("--max-model-len", type=int, default=None)
        add("--seed", type=int, default=None)
        add(
            "--prefix-cache-mb",
            type=int,
            default=None,
            help="MiB of prompt prefixes kept across requests: transformers 512, llama.cpp 128; 0: off.",
        )
        add("--drain-timeout", type=float, default=None, help="Seconds (default WORKER_DRAIN_TIMEOUT).")
        add("--canned-token-delay", type=float, default=0.0, help="Canned engine: seconds per token.")
        add("--canned-task", choices=["generate", "embed"], default="generate", help="Canned engine task.")
        vllm = parser.add_argument_group("vLLM (with --backend vllm; vLLM's own names and meanings)")
        vllm.add_argument(
            "--tensor-parallel-size", type=int, default=None, help="GPUs the model is split over."
        )
        vllm.add_argument(
            "--max-num-batched-tokens", type=int, default=None, help="Tokens per scheduler step."
        )
        vllm.add_argument(
            "--gpu-memory-utilization", type=float, default=None, help="Share of GPU memory, 0-1."
        )
        vllm.add_argument("--quantization", default=None, help="e.g. awq, gptq, fp8.")
        vllm.add_argument(
            "--enable-prefix-caching", action=BooleanOptionalAction, default=None, help="vLLM's default: on."
        )
        vllm.add_argument(
            "--kv-transfer-config",
            default=None,
            help='JSON, e.g. \'{"kv_connector": "NixlConnector", "kv_role": "kv_both"}\'.',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from inference.worker.server import ServeOptions, StartupError, WorkerServer

        if options["stream_interval"] < 1 or options["max_concurrency"] < 1:
            raise CommandError("--stream-interval and --max-concurrency must be at least 1.")
        token = options["worker_token"] or settings.WORKER_TOKEN
        check_exposure(options["host"], token)
        if options["backend"] in ("llamacpp", "auto"):
            from inference.engines import llamacpp_build

            # llama.cpp built for this CPU, where it is ready and adopted
            llamacpp_build.activate(settings.LLAMACPP_BUILD_DIR, settings.LLAMACPP_NATIVE)
        engine = build_engine(engine_config(options), options["backend"])
        info = engine.info
        if options["seed"] is not None and info.backend != "vllm":
            # Our own engines seed each request from its `seed` field; a global seed would be ignored.
            raise CommandError(f"--seed is used by the vLLM engine only, not by {info.backend}.")
        if options["role"] != "both" and not info.disaggregates:
            raise CommandError(
                f"--role {options['role']}: the {info.backend} engine does not split prefill from decode."
            )
        self.stdout.write(
            f"Engine: {info.backend} on {info.device}"
            + (
                f" ({', '.join(filter(None, (info.build, info.detail)))})"
                if info.build or info.detail
                else ""
            )
        )
        names = [n.strip() for n in options["model_names"].split(",") if n.strip()]
        ctx = WorkerContext(
            engine=engine,
            served_names=names or [engine.info.default_name],
            token=token,
            token_fallbacks=tuple(settings.WORKER_TOKEN_FALLBACKS),
            stream_interval=options["stream_interval"],
            role=options["role"],
            handoff_max_bytes=settings.HANDOFF_MAX_BYTES,
            limits={
                "max_concurrency": options["max_concurrency"],
                "max_queue": options["max_queue"],
                "queue_timeout": options["queue_timeout"],
                "max_model_len": engine.info.max_model_len,
            },
        )
        interval = options["heartbeat_interval"] or settings.HEARTBEAT_INTERVAL
        serve = ServeOptions(
            host=options["host"],
            port=options["port"],
            worker_address=options["worker_address"],
            worker_id=options["worker_id"],
            register=not options["no_register"],
            heartbeat_interval=interval,
            drain_timeout=options["drain_timeout"] or settings.WORKER_DRAIN_TIMEOUT,
        )
        registration = {
            "model_names": tuple(ctx.served_names),
            "task": engine.info.task,
            "backend": engine.info.backend,
            "device": engine.info.device,
            "build": engine.info.build,
            "model_path": options["model_path"],
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "max_concurrency": options["max_concurrency"],
            "max_queue": options["max_queue"],
            "max_model_len": engine.info.max_model_len,
            "heartbeat_interval": interval,
            "role": options["role"],
        }
        try:
            WorkerServer(ctx, serve, registration).run()
        except StartupError as exc:
            raise CommandError(str(exc)) from None
