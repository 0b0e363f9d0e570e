"""Find pipelines by path from `settings.SIGNED_PIPELINES` (dotted paths), loading them once."""

from __future__ import annotations

import asyncio
import threading

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from portal.signed.pipelines.base import Pipeline

_lock = threading.Lock()
_loaded: tuple[tuple[str, ...], dict[str, Pipeline]] | None = None


def get_pipelines() -> dict[str, Pipeline]:
    """Return the configured pipelines by path; settings are read at call time, instances kept."""
    global _loaded
    dotted = tuple(settings.SIGNED_PIPELINES)
    with _lock:
        if _loaded is None or _loaded[0] != dotted:
            pipelines: dict[str, Pipeline] = {}
            for name in dotted:
                pipeline_class = import_string(name)
                if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, Pipeline)):
                    raise ImproperlyConfigured(f"SIGNED_PIPELINES: {name} is not a Pipeline subclass")
                if not pipeline_class.path or pipeline_class.path in pipelines:
                    raise ImproperlyConfigured(f"SIGNED_PIPELINES: {name} has an empty or duplicate path")
                pipelines[pipeline_class.path] = pipeline_class()
            _loaded = (dotted, pipelines)
        return _loaded[1]


async def aget_ready_pipeline(path: str) -> Pipeline | None:
    """Return the pipeline serving `path`, initialised (go-infer's Init), or None when unknown."""
    pipeline = get_pipelines().get(path)
    if pipeline is not None and not pipeline.initialized:
        await asyncio.to_thread(pipeline.ensure_initialized)
    return pipeline
