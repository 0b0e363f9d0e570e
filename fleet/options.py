"""A deployment's worker options as data: the runworker options it may set, and the argv built from them.

A deployment is written by staff, but its replicas run on every node as the
agent's user, so nothing in it may reach Django's command runner as code.
Django reads `--settings` and `--pythonpath` from anywhere on a command line
and imports them before the command starts, and argparse would take `--hos`
for `--host`. So a worker's argv holds only options on an exact allow-list,
each as one `--flag=value` element (a value can never be read as an option),
and the agent checks the whole argv again before it starts a process. Pure:
no database, no Django settings.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from inference.loading import HUB_ID, PACKAGED_MODELS

if TYPE_CHECKING:
    from fleet.models import Deployment

# Options the agent sets from the deployment's own fields or from the node.
MANAGED_FLAGS = frozenset({
    "--model-path", "--model-names", "--backend", "--role", "--max-concurrency", "--dtype", "--threads",
    "--max-model-len", "--host", "--port", "--worker-id", "--worker-address",
})  # fmt: skip
# Options a deployment's extra options may set: how a worker serves, never where or as whom.
EXTRA_FLAGS = frozenset({
    "--max-queue", "--queue-timeout", "--stream-interval", "--heartbeat-interval", "--drain-timeout",
    "--seed", "--device", "--canned-token-delay", "--canned-task", "--tensor-parallel-size",
    "--max-num-batched-tokens", "--gpu-memory-utilization", "--quantization", "--kv-transfer-config",
    "--prefix-cache-mb",
})  # fmt: skip
# Extra options that take no value.
EXTRA_SWITCHES = frozenset({"--enable-prefix-caching", "--no-enable-prefix-caching"})
ALLOWED_FLAGS = MANAGED_FLAGS | EXTRA_FLAGS
MAX_VALUE_LENGTH = 1000


class OptionError(ValueError):
    """An option a deployment may not set, or a malformed one; the message names it."""


def _check_value(flag: str, value: str) -> None:
    if len(value) > MAX_VALUE_LENGTH or not value.isprintable():
        raise OptionError(f"{flag}: the value must be printable and at most {MAX_VALUE_LENGTH} characters.")


def parse_extra_options(text: str) -> list[str]:
    """The extra options as `--flag=value` elements; OptionError names the first one refused.

    Accepts `--flag value`, `--flag=value` and the switches, shell-quoted. An
    option outside the allow-list is refused, an abbreviation included.
    """
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise OptionError(f"{exc}.") from None
    options: list[str] = []
    rest = iter(tokens)
    for token in rest:
        flag, has_value, value = token.partition("=")
        if flag in MANAGED_FLAGS:
            raise OptionError(f"{flag} is set by the deployment's own fields or by the agent.")
        if flag in EXTRA_SWITCHES and not has_value:
            options.append(flag)
            continue
        if flag not in EXTRA_FLAGS:
            allowed = ", ".join(sorted(EXTRA_FLAGS | EXTRA_SWITCHES))
            raise OptionError(
                f"{token.split('=')[0]!r} is not an option a deployment may set (allowed: {allowed})."
            )
        if not has_value:
            following = next(rest, None)
            if following is None:
                raise OptionError(f"{flag} needs a value.")
            value = following
        _check_value(flag, value)
        options.append(f"{flag}={value}")
    return options


def option(flag: str, value: object) -> str:
    """One argv element `--flag=value` for an option the agent sets."""
    assert flag in MANAGED_FLAGS, flag
    text = str(value)
    _check_value(flag, text)
    return f"{flag}={text}"


def deployment_fields(deployment: Deployment) -> list[tuple[str, object]]:
    """The options a deployment's own fields set, as (flag, value): where and as whom are the caller's."""
    fields: list[tuple[str, object]] = [
        ("--model-path", deployment.model_path),
        ("--model-names", ",".join(deployment.served_names)),
        ("--backend", deployment.backend),
        ("--role", deployment.role),
        ("--max-concurrency", deployment.max_concurrency),
        ("--dtype", deployment.dtype),
    ]
    if deployment.threads:
        fields.append(("--threads", deployment.threads))
    if deployment.max_model_len:
        fields.append(("--max-model-len", deployment.max_model_len))
    return fields


def check_worker_argv(argv: Sequence[str], *, prefix: Iterable[str]) -> None:
    """Refuse (OptionError) an argv that is not `prefix` then allowed `--flag=value` options only.

    The last check before a process starts: whatever built the argv, an
    option outside the allow-list, a Django base option, an abbreviation or a
    bare value never reaches `manage.py`.
    """
    head = list(prefix)
    if list(argv[: len(head)]) != head:
        raise OptionError(f"A worker's command must start with {shlex.join(head)}.")
    for element in argv[len(head) :]:
        flag, has_value, value = element.partition("=")
        if flag in EXTRA_SWITCHES and not has_value:
            continue
        if not has_value or flag not in ALLOWED_FLAGS:
            raise OptionError(f"{element.split('=')[0]!r} is not an option a worker may be started with.")
        _check_value(flag, value)


def check_model_path(path: str, *, backend: str, catalogue: Iterable[str], hub_orgs: Iterable[str]) -> None:
    """Refuse (OptionError) a model path that is not packaged, catalogued or of an allowed hub organisation.

    The canned engine loads nothing, so its path is a label.
    """
    if backend == "canned" or path.lower() in PACKAGED_MODELS or path in set(catalogue):
        return
    org, slash, _ = path.partition("/")
    if slash and HUB_ID.match(path) and org in set(hub_orgs):
        return
    raise OptionError(
        f"{path!r} is neither a packaged model ({', '.join(sorted(PACKAGED_MODELS))}), nor in a node's "
        "catalogue (the folders and .gguf files under its MODEL_DIRS), nor a hub id of an organisation "
        "in FLEET_HUB_ORGS."
    )
