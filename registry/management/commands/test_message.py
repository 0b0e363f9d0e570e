"""`manage.py test_message --model-name NAME`: send one chat message through the portal (like FastChat's)."""

from __future__ import annotations

import json
import time
from argparse import ArgumentParser
from typing import Any

import httpx2
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Stream one chat message through the portal's /v1 API and print the answer and tokens/s."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--model-name", required=True)
        parser.add_argument("--portal-url", default="http://127.0.0.1:8000")
        parser.add_argument("--api-key", default="", help="An API key (sk-...).")
        parser.add_argument("--message", default="Tell me a story with more than 100 words.")
        parser.add_argument("--max-tokens", type=int, default=128)

    def handle(self, *args: Any, **options: Any) -> None:
        body = {
            "model": options["model_name"],
            "messages": [{"role": "user", "content": options["message"]}],
            "max_tokens": options["max_tokens"],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        url = options["portal_url"].rstrip("/") + "/v1/chat/completions"
        headers = {"Authorization": f"Bearer {options['api_key']}"}
        self.stdout.write(f"user: {options['message']}\nassistant: ", ending="")
        started = time.perf_counter()
        tokens = self._stream(url, body, headers)
        elapsed = time.perf_counter() - started
        self.stdout.write(f"\n\n{tokens} tokens in {elapsed:.2f} s: {tokens / elapsed:.1f} tokens/s")

    def _stream(self, url: str, body: dict, headers: dict[str, str]) -> int:
        tokens = 0
        try:
            with httpx2.stream("POST", url, json=body, headers=headers, timeout=120) as response:
                if response.status_code != 200:
                    response.read()
                    raise CommandError(f"HTTP {response.status_code}: {response.text}")
                for line in response.iter_lines():
                    if not line.startswith("data:") or line.endswith("[DONE]"):
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("error"):
                        raise CommandError(f"The stream failed: {chunk['error'].get('message')}")
                    for choice in chunk.get("choices") or []:
                        self.stdout.write((choice.get("delta") or {}).get("content") or "", ending="")
                        self.stdout.flush()
                    if chunk.get("usage"):
                        tokens = int(chunk["usage"].get("completion_tokens") or 0)
        except httpx2.HTTPError as exc:
            raise CommandError(f"Cannot reach the portal at {url}: {exc}") from None
        return tokens
