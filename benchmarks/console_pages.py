"""Time every admin list and console page on a large fleet: 1,000 workers, 10,000 keys, 1,000,000 usage rows.

    python benchmarks/console_pages.py [--database-url URL] [--workers 1000] [--keys 10000]
                                       [--usage 1000000] [--repeats 5]

The first run builds the data set (`manage.py seed_scale_data`) in a scratch
database (by default a SQLite file under var/bench/, kept for later runs; pass
a PostgreSQL URL to measure there). Each page is fetched once to warm up, then
`--repeats` times as a logged-in superuser through Django's test client
(in process: no network, so the figure is the page's own cost). Printed per
page: median and worst milliseconds, and the number of SQL queries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PAGES = [
    "/admin/",
    "/admin/console/",
    "/admin/console/fleet.json",
    "/admin/console/usage/",
    "/admin/registry/worker/",
    "/admin/registry/servedmodel/",
    "/admin/registry/apikey/",
    "/admin/registry/appcredential/",
    "/admin/registry/usagerecord/",
    "/admin/registry/usagerollupday/",
    "/admin/fleet/node/",
    "/admin/fleet/deployment/",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    scratch = REPO / "var" / "bench" / "console-scale.sqlite3"
    parser.add_argument("--database-url", default=f"sqlite:///{scratch}")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--usage", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.database_url.startswith("sqlite:///"):
        Path(args.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        DATABASE_URL=args.database_url,
        ENV_FILE=os.environ.get("ENV_FILE", "/dev/null"),
        SECRET_KEY=os.environ.get("SECRET_KEY", "benchmark-only-secret-key"),
        ALLOWED_HOSTS="testserver",
    )
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.core.signals import request_started
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from registry.models import UsageRecord, Worker

    call_command("migrate", verbosity=0)
    if not Worker.objects.filter(identity__startswith="scale-").exists():
        print("Building the data set (once)…", flush=True)
        call_command("seed_scale_data", workers=args.workers, keys=args.keys, usage=args.usage)
        from registry.services.rollups import roll_up_usage

        roll_up_usage()
    rows = UsageRecord.objects.count()
    print(f"Data: {Worker.objects.count()} workers, {rows} usage rows ({connection.vendor})")
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_staff": True})
    user.is_staff = user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    request_started.disconnect(reset_queries)  # else each request empties the query log being counted

    print(f"{'page':<36} {'median ms':>10} {'worst ms':>10} {'queries':>8}")
    for page in PAGES:
        response = client.get(page)  # warm up
        if response.status_code != 200:
            print(f"{page:<36} HTTP {response.status_code}")
            continue
        times = []
        reset_queries()  # the log is a bounded deque: a full one would count nothing
        with CaptureQueriesContext(connection) as queries:
            client.get(page)
        count = len(queries)  # now: a reconnect in a later request empties the log
        for _ in range(args.repeats):
            started = time.perf_counter()
            client.get(page)
            times.append((time.perf_counter() - started) * 1000)
        print(f"{page:<36} {statistics.median(times):>10.0f} {max(times):>10.0f} {count:>8}")


if __name__ == "__main__":
    main()
