"""`manage.py chat --model-path PATH`: a terminal chat with a model loaded in-process.

Like FastChat's CLI: multi-turn, streamed answers, `--debug` prints tokens/s.
The same engine a worker serves, so what you see here is what the API answers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandError

from inference.engines.base import Engine, EngineConfig, GenerationRequest
from inference.errors import EngineError
from inference.management.commands.runworker import build_engine
from inference.sampling import SamplingParams

EXIT_WORDS = {"exit", "quit", "/exit", "/quit"}


class Command(BaseCommand):
    requires_system_checks = [Tags.models]  # no URL to serve: checking the URL conf imports every view
    help = "Chat with a model in the terminal (in-process engine); empty line or 'exit' quits."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--model-path", required=True)
        parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
        parser.add_argument("--backend", choices=["auto", "transformers", "vllm", "canned"], default="auto")
        parser.add_argument("--temperature", type=float, default=0.7)
        parser.add_argument("--max-tokens", type=int, default=512)
        parser.add_argument("--system", default="", help="An optional system prompt.")
        parser.add_argument("--debug", action="store_true", help="Print tokens per second after each answer.")

    def handle(self, *args: Any, **options: Any) -> None:
        config = EngineConfig(
            model_path=options["model_path"],
            device=options["device"],
            max_concurrency=1,
            cache_dir=str(settings.MODEL_CACHE_DIR),
        )
        engine = build_engine(config, options["backend"])
        if engine.info.task != "generate":
            raise CommandError("This model serves embeddings; chat needs a text generation model.")
        try:
            params = SamplingParams.from_request(
                {"temperature": options["temperature"], "max_tokens": options["max_tokens"]}
            )
        except EngineError as exc:
            raise CommandError(str(exc)) from None
        asyncio.run(self._chat(engine, params, options))

    async def _chat(self, engine: Engine, params: SamplingParams, options: dict[str, Any]) -> None:
        await engine.start()
        messages: list[dict[str, Any]] = []
        if options["system"]:
            messages.append({"role": "system", "content": options["system"]})
        try:
            while True:
                try:
                    text = await asyncio.to_thread(input, "USER: ")
                except EOFError:
                    break
                if not text.strip() or text.strip().lower() in EXIT_WORDS:
                    break
                messages.append({"role": "user", "content": text})
                answer = await self._answer(engine, messages, params, debug=options["debug"])
                messages.append({"role": "assistant", "content": answer})
        finally:
            await engine.shutdown()

    async def _answer(
        self, engine: Engine, messages: list[dict[str, Any]], params: SamplingParams, *, debug: bool
    ) -> str:
        """Stream one answer to stdout; return its text for the next turn's history."""
        prompt = await asyncio.to_thread(lambda: engine.tokenize(engine.render_chat(messages)))
        request = GenerationRequest(f"chat-{uuid.uuid4().hex}", prompt, params)
        self.stdout.write("ASSISTANT: ", ending="")
        parts: list[str] = []
        tokens = 0
        started = time.perf_counter()
        try:
            async for delta in engine.generate(request):
                parts.append(delta.text)
                self.stdout.write(delta.text, ending="")
                self.stdout.flush()
                if delta.usage is not None:
                    tokens = delta.usage.completion_tokens
        except EngineError as exc:
            self.stderr.write(f"\n[error] {exc}")
        elapsed = time.perf_counter() - started
        self.stdout.write("")
        if debug:
            self.stdout.write(
                f"[{tokens} tokens in {elapsed:.2f} s, {tokens / max(elapsed, 1e-9):.1f} tokens/s]"
            )
        return "".join(parts)
