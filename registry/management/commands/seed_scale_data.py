"""Build a large fleet for measuring the console: workers, keys, credentials and usage rows.

    python manage.py seed_scale_data [--workers 1000] [--keys 10000] [--usage 1000000] [--days 30]

Rows are written with `bulk_create` in batches and carry a `scale-` prefix, so
the command can be run on a scratch database only: it refuses to run twice.
Keys get random hashes (no usable secret is made).
"""

from __future__ import annotations

import random
import secrets
import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from fleet.models import Deployment, Instance, InstanceState, Node
from registry.models import (
    ApiKey,
    AppCredential,
    ServedModel,
    UsageRecord,
    UsageStatus,
    Worker,
    WorkerStatus,
)

BATCH = 10_000
MODELS = 20
CREDENTIALS = 100


class Command(BaseCommand):
    help = "Fill a scratch database with a large fleet and usage history (for benchmarks/console_pages.py)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--workers", type=int, default=1000)
        parser.add_argument("--keys", type=int, default=10_000)
        parser.add_argument("--usage", type=int, default=1_000_000)
        parser.add_argument("--days", type=int, default=30)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        if Worker.objects.filter(identity__startswith="scale-").exists():
            raise CommandError("This database already holds the scale data set.")
        rng = random.Random(options["seed"])
        started = time.perf_counter()
        models = ServedModel.objects.bulk_create(
            [ServedModel(name=f"scale-model-{i}") for i in range(MODELS)]
        )
        workers = self._workers(options["workers"], models, rng)
        keys = ApiKey.objects.bulk_create(
            [
                ApiKey(
                    name=f"scale-key-{i}",
                    prefix=f"s{i:07d}",
                    hashed_secret=secrets.token_hex(32),
                    all_models=True,
                )
                for i in range(options["keys"])
            ],
            batch_size=BATCH,
        )
        credentials = AppCredential.objects.bulk_create(
            [AppCredential(app_id=f"scale-app-{i}", secret_ciphertext="-") for i in range(CREDENTIALS)]
        )
        self._usage(options["usage"], options["days"], models, workers, keys, credentials, rng)
        nodes = self._deployments(workers, models)
        self.stdout.write(
            f"Seeded {len(workers)} workers ({nodes} nodes), {len(keys)} keys, {len(credentials)} app "
            f"credentials and {options['usage']} usage rows in {time.perf_counter() - started:.0f} s."
        )

    def _workers(self, count: int, models: list[ServedModel], rng: random.Random) -> list[Worker]:
        now = timezone.now()
        workers = Worker.objects.bulk_create(
            [
                Worker(
                    identity=f"scale-{i}",
                    address=f"http://10.0.{i // 250}.{i % 250}:8001",
                    status=WorkerStatus.ONLINE if i % 10 else WorkerStatus.OFFLINE,
                    backend="llamacpp",
                    device="cpu",
                    max_concurrency=8,
                    in_flight=rng.randint(0, 8),
                    tokens_per_second=rng.uniform(10, 200),
                    last_heartbeat=now,
                    expires_at=now + timedelta(minutes=10),
                )
                for i in range(count)
            ],
            batch_size=BATCH,
        )
        through = Worker.served_models.through
        through.objects.bulk_create(
            [
                through(worker_id=w.id, servedmodel_id=models[i % len(models)].id)
                for i, w in enumerate(workers)
            ],
            batch_size=BATCH,
        )
        return workers

    def _deployments(self, workers: list[Worker], models: list[ServedModel]) -> int:
        """One deployment per model and an instance for each worker, on nodes of 8 workers each."""
        now = timezone.now()
        nodes = Node.objects.bulk_create(
            [
                Node(name=f"scale-node-{i}", address=f"10.0.0.{i}", cpus=64, memory_bytes=2**40,
                     last_heartbeat=now, expires_at=now + timedelta(minutes=10))
                for i in range((len(workers) + 7) // 8)
            ]
        )  # fmt: skip
        deployments = Deployment.objects.bulk_create(
            [Deployment(name=m.name, model_path="smollm2-135m-instruct", replicas=0) for m in models]
        )
        Instance.objects.bulk_create(
            [
                Instance(deployment=deployments[i % len(deployments)], node=nodes[i // 8], generation=1,
                         state=InstanceState.READY, memory_bytes=2**30, pid=1000 + i)
                for i in range(len(workers))
            ],
            batch_size=BATCH,
        )  # fmt: skip
        Deployment.objects.update(replicas=len(workers) // len(deployments))
        return len(nodes)

    def _usage(
        self, count: int, days: int, models: list, workers: list, keys: list, creds: list, rng: Any
    ) -> None:
        now = timezone.now()
        span = days * 86_400
        for start in range(0, count, BATCH):
            rows = []
            for _ in range(min(BATCH, count - start)):
                model = rng.choice(models)
                signed = rng.random() < 0.1
                ok = rng.random() < 0.98
                rows.append(
                    UsageRecord(
                        created_at=now - timedelta(seconds=rng.uniform(0, span)),
                        request_id=secrets.token_hex(8),
                        source="signed" if signed else "api",
                        endpoint="chat",
                        api_key_id=None if signed else rng.choice(keys).id,
                        app_credential_id=rng.choice(creds).id if signed else None,
                        model_name=model.name,
                        served_model_id=model.id,
                        worker_id=rng.choice(workers).id,
                        prompt_tokens=rng.randint(10, 2000),
                        completion_tokens=rng.randint(1, 500),
                        time_to_first_token_ms=rng.uniform(20, 800),
                        total_time_ms=rng.uniform(200, 20_000),
                        status=UsageStatus.OK if ok else UsageStatus.ERROR,
                        status_code=200 if ok else 502,
                    )
                )
            UsageRecord.objects.bulk_create(rows)
            self.stdout.write(f"  {start + len(rows)} usage rows", ending="\r")
            self.stdout.flush()
        self.stdout.write("")
