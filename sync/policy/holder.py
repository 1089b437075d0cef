"""The policy in force, reloaded between batches when its files change.

A new policy that fails validation is refused: the error is logged and counted, and the
last good policy stays in force (fail safe — never fall back to "sync everything" or to
"nothing validated").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sync.db.catalog import Schema
from sync.errors import PolicyError
from sync.policy.loader import load_policy
from sync.policy.model import Policy

log = logging.getLogger(__name__)


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                            for p in directory.iterdir() if p.suffix in (".yaml", ".yml")))
    except OSError:
        return ()


class PolicyHolder:
    def __init__(self, directory: Path, schema: Schema, *, regions: list[str] | None = None,
                 on_loaded: Callable[[Policy], None] | None = None,
                 on_refused: Callable[[PolicyError], None] | None = None,
                 check_every: float = 1.0) -> None:
        self.directory = Path(directory)
        self.schema = schema
        self.regions = regions
        self._on_loaded = on_loaded
        self._on_refused = on_refused
        self._check_every = check_every
        self._lock = threading.Lock()
        self._sig = _signature(self.directory)
        self._policy = load_policy(self.directory, schema, regions)  # first load: fatal
        self._checked = time.monotonic()
        if on_loaded:
            on_loaded(self._policy)

    def current(self) -> Policy:
        """The policy in force; picks up a changed directory at most every ``check_every``."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self._check_every:
                self._checked = now
                sig = _signature(self.directory)
                if sig != self._sig:
                    self._sig = sig
                    self._reload()
            return self._policy

    def _reload(self) -> None:
        try:
            policy = load_policy(self.directory, self.schema, self.regions)
        except PolicyError as exc:
            log.error("policy change refused, keeping policy %s in force: %s",
                      self._policy.sha, exc)
            if self._on_refused:
                self._on_refused(exc)
            return
        if policy.sha != self._policy.sha:
            log.info("policy %s in force (was %s)", policy.sha, self._policy.sha)
            self._policy = policy
            if self._on_loaded:
                self._on_loaded(policy)
