"""A client for the signed API that signs requests (SHA256 or SM2); needs no Django.

    client = SignedClient("http://127.0.0.1:8000", app_id="3EA2…", secret="41DF…")
    reply = client.call("chat", {"prompt": "What is the capital of France?", "temperature": 0})
    reply["code"], reply["data"]["answer"]

Or from a shell: `python -m portal.signed.client URL APP_ID SECRET PIPELINE '{"text": "hi"}'`
(`--sign-type SM2 --sm2-private-key KEY` for SM2; KEY in hex or go-infer's base64).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2

from signing import sm2
from signing.canonical import canonical_string, sha256_sign_data

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def _private_key_hex(value: str) -> str:
    return value.lower() if _HEX64.match(value) else sm2.private_key_from_base64(value)


def sign_body(
    body: dict[str, Any], *, secret: str, sign_type: str = "SHA256", sm2_private_key: str | None = None
) -> dict[str, Any]:
    """Return `body` with `signType` and `signData` set, signed as go-infer expects."""
    signed = {**body, "signType": sign_type}
    signed.pop("signData", None)
    text = canonical_string(signed, secret)
    if sign_type == "SHA256":
        signed["signData"] = sha256_sign_data(text)
    elif sign_type == "SM2":
        if not sm2_private_key:
            raise ValueError("signType SM2 needs sm2_private_key")
        signed["signData"] = sm2.sign_base64(text, private_key_hex=_private_key_hex(sm2_private_key))
    elif sign_type == "plain":
        signed["signData"] = ""
    else:
        raise ValueError(f"unknown signType {sign_type!r}")
    return signed


@dataclass
class SignedClient:
    """Calls `POST {base_url}/api/<pipeline>` with a signed envelope and returns the reply JSON."""

    base_url: str
    app_id: str
    secret: str = field(repr=False)
    sign_type: str = "SHA256"
    sm2_private_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0

    def build(self, data: dict[str, Any], *, timestamp: int | None = None, **extra: Any) -> dict[str, Any]:
        """Return the signed body for `data`; `extra` adds top-level keys (signed as well)."""
        body = {
            "appId": self.app_id,
            "version": "1",
            "encType": "plain",
            "timestamp": int(time.time()) if timestamp is None else timestamp,
            "data": data,
            **extra,
        }
        return sign_body(
            body, secret=self.secret, sign_type=self.sign_type, sm2_private_key=self.sm2_private_key
        )

    def url(self, pipeline: str) -> str:
        return f"{self.base_url.rstrip('/')}/api/{pipeline}"

    def call(self, pipeline: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Sign and send one request; the reply's `code` says how it went (0 is success)."""
        response = httpx2.post(self.url(pipeline), json=self.build(data, **extra), timeout=self.timeout)
        response.raise_for_status()
        return dict(response.json())

    async def acall(self, pipeline: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """As `call`, for async code."""
        async with httpx2.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(self.url(pipeline), json=self.build(data, **extra))
        response.raise_for_status()
        return dict(response.json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send one signed request to the portal.")
    parser.add_argument("url")
    parser.add_argument("app_id")
    parser.add_argument("secret")
    parser.add_argument("pipeline")
    parser.add_argument("data", help="the data object as JSON")
    parser.add_argument("--sign-type", default="SHA256", choices=["SHA256", "SM2", "plain"])
    parser.add_argument("--sm2-private-key")
    args = parser.parse_args(argv)
    client = SignedClient(
        args.url, args.app_id, args.secret, sign_type=args.sign_type, sm2_private_key=args.sm2_private_key
    )
    reply = client.call(args.pipeline, json.loads(args.data))
    print(json.dumps(reply, ensure_ascii=False, indent=2))
    return 0 if reply.get("code") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
