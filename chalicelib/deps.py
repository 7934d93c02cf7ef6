"""The one small object that carries the app's dependencies, built lazily.

Handlers call ``get()``; tests call ``override()`` with their own wiring.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .config import Settings, settings
from .service import RunService


@dataclass(frozen=True)
class Deps:
    settings: Settings
    service: RunService


_lock = threading.Lock()
_deps: Deps | None = None


def build(config: Settings) -> Deps:
    from . import models
    from .store import ProjectRepository, RunRepository

    models.bind(config)
    service = RunService(
        ProjectRepository(models.ProjectModel),
        RunRepository(models.RunModel),
        bucket=config.bucket,
        outbox_stale_s=config.outbox_stale_s,
    )
    return Deps(settings=config, service=service)


def get() -> Deps:
    global _deps
    if _deps is None:
        with _lock:
            if _deps is None:
                _deps = build(settings())
    return _deps


def override(deps: Deps | None) -> None:
    global _deps
    _deps = deps
