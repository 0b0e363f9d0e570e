"""Time the signed API's refusal of an unknown appId: a small body against a 1 MiB one.

    python benchmarks/signed_intake.py [--database-url URL] [--repeats 20]

Requests go through the endpoint in process (Django's async test client, no
network), against a scratch database (by default a SQLite file under
var/bench/). Printed per body: seconds per request (median and worst) and the
code answered. The 1 MiB bodies are costly shapes to parse and canonicalise
(many small numbers, many small keys), with `appId` first (as every go-infer
client sends it), last, or between `data` and the rest; for comparison, the
same body signed by a known app, which is parsed and verified (9804 after the
first: a replay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
KNOWN_APP = "bench-app"


def _fill(unit: str, overhead: int) -> int:
    """How many `unit`s fit in a body of just under 1 MiB."""
    return (MIB - overhead - 512) // len(unit)


def _numbers() -> dict[str, Any]:
    return {"x": [1.5] * _fill("1.5, ", 0)}


def _keys() -> dict[str, Any]:
    return {f"k{i:06d}": i % 10 for i in range(_fill('"k000000": 0, ', 0))}


def _body(app_id: str, data: dict[str, Any], *, at: str = "first") -> dict[str, Any]:
    """An unsigned envelope with `appId` first, last, or between `data` and the other fields."""
    envelope = {"signType": "SHA256", "signData": "x", "timestamp": int(time.time())}
    if at == "first":
        return {"appId": app_id, **envelope, "data": data}
    if at == "last":
        return {**envelope, "data": data, "appId": app_id}
    return {"data": data, "appId": app_id, **envelope}


def _bodies(secret: str) -> dict[str, bytes]:
    from portal.signed.client import sign_body

    def raw(body: dict[str, Any]) -> bytes:
        return json.dumps(body).encode()

    signed = sign_body({"appId": KNOWN_APP, "timestamp": int(time.time()), "data": _numbers()}, secret=secret)
    return {
        "unknown appId, small body": raw(_body("nobody", {"text": "hi"})),
        "unknown appId first, 1 MiB of numbers": raw(_body("nobody", _numbers())),
        "unknown appId first, 1 MiB of keys": raw(_body("nobody", _keys())),
        "unknown appId last, 1 MiB of numbers": raw(_body("nobody", _numbers(), at="last")),
        "unknown appId mid, 1 MiB of numbers": raw(_body("nobody", _numbers(), at="middle")),
        "unknown appId mid, 1 MiB of keys": raw(_body("nobody", _keys(), at="middle")),
        "known app, signed, 1 MiB of numbers": raw(signed),
    }


async def _time(body: bytes, repeats: int) -> tuple[list[float], int]:
    from django.test import AsyncClient

    client = AsyncClient()
    seconds, code = [], -1
    for _ in range(repeats + 1):  # the first warms the credential cache
        started = time.perf_counter()
        response = await client.post("/api/echo", data=body, content_type="application/json")
        seconds.append(time.perf_counter() - started)
        code = response.json()["code"]
    return seconds[1:], code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    scratch = REPO / "var" / "bench" / "signed-intake.sqlite3"
    parser.add_argument("--database-url", default=f"sqlite:///{scratch}")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.database_url.startswith("sqlite:///"):
        Path(args.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        DATABASE_URL=args.database_url,
        ENV_FILE=os.environ.get("ENV_FILE", "/dev/null"),
        SECRET_KEY=os.environ.get("SECRET_KEY", "benchmark-only-secret-key"),
        ALLOWED_HOSTS="testserver",
        SIGNED_PIPELINES="portal.signed.pipelines.echo.EchoPipeline",
    )
    import django

    django.setup()
    logging.getLogger("portal.signed").setLevel(logging.WARNING)  # one line per refusal otherwise
    from django.core.management import call_command

    from registry.models import AppCredential
    from registry.services.credentials import create_app_credential

    call_command("migrate", verbosity=0)
    AppCredential.objects.filter(app_id=KNOWN_APP).delete()
    _, secret = create_app_credential(app_id=KNOWN_APP, requests_per_minute=None)
    for name, body in _bodies(secret).items():
        seconds, code = asyncio.run(_time(body, args.repeats))
        print(
            f"{name:<44} {len(body):>8} B  code {code}  "
            f"median {statistics.median(seconds):.4f} s  worst {max(seconds):.4f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
