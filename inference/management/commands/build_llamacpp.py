"""`manage.py build_llamacpp`: build llama.cpp for this CPU once, into LLAMACPP_BUILD_DIR.

The node agent runs it in the background on its first start (LLAMACPP_NATIVE=auto);
run by hand it builds in the foreground. Workers load the build on their next start.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.engines import llamacpp_build


class Command(BaseCommand):
    requires_system_checks = [Tags.models]  # no URL to serve: checking the URL conf imports every view
    help = "Build xllamacpp (llama.cpp) from its sdist for this CPU, once per CPU and version."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Parallel compile jobs.")
        parser.add_argument("--force", action="store_true", help="Build again after a failed build.")
        parser.add_argument("--nice", type=int, default=10, help="Niceness of the build (0: as is).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["nice"]:
            os.nice(options["nice"])  # serving workers keep the CPU they need
        root = settings.LLAMACPP_BUILD_DIR
        try:
            folder = llamacpp_build.build(root, jobs=options["jobs"], force=options["force"], log=sys.stdout)
        except llamacpp_build.BuildFailed as exc:
            raise CommandError(str(exc)) from None
        if llamacpp_build.has_failed(folder) and not llamacpp_build.is_ready(folder):
            raise CommandError(f"An earlier build failed (see {folder}/failed.json); --force builds again.")
        self.stdout.write(f"Native llama.cpp ready in {folder}: workers load it on their next start.")
