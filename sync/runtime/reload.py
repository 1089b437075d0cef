"""Reloading a running daemon's configuration (``SIGHUP``, ``systemctl reload``).

As PostgreSQL and Prometheus do it: the file is read and validated in full first; a file
that does not load is refused in one line and the running configuration stays. A link
whose settings are the same in both (``LinkSettings`` compares every one of them: the
peer's URL and secret, its rate limit and origins, page size, poll interval, …) keeps
running on its connections; a peer that appears starts, one that disappears stops once
its page in flight has committed, and one whose settings changed restarts. Settings that
name the process itself — the region, its database, the HTTP endpoint, the capture path,
the policy directory — take effect at the next restart; a reload that changes them says
so and keeps the running values, except the region: a file for another region is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sync.config import RegionConfig
from sync.errors import ConfigError
from sync.link.settings import LinkSettings

# what only a restart changes: the running value is kept, and the reload says so
RESTART_ONLY = ("database", "metrics", "capture", "policy_dir", "leader_check_interval")


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does to the running daemon (``effective`` is the config it runs)."""

    effective: RegionConfig
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()          # restarted with new settings
    kept: tuple[str, ...] = ()             # running on, untouched
    at_restart: tuple[str, ...] = ()       # keys whose new value waits for a restart

    def summary(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in (
            ("added", self.added), ("removed", self.removed), ("restarted", self.changed),
            ("kept", self.kept)) if names]
        return "; ".join(parts) or "no peers"


def plan_reload(running: RegionConfig, loaded: RegionConfig) -> ReloadPlan:
    """Compare the running config with a freshly loaded one. Raises ``ConfigError`` when
    the file is for another region (nothing of it applies)."""
    where = str(loaded.source_file) if loaded.source_file else None
    if loaded.region != running.region:
        raise ConfigError(f"region is {loaded.region!r} in the file but this daemon runs "
                          f"{running.region!r}; a region is renamed only by a restart with "
                          "its own database", key="region", file=where)
    at_restart = tuple(k for k in RESTART_ONLY
                       if _comparable(getattr(loaded, k)) != _comparable(getattr(running, k)))
    effective = loaded.model_copy(update={k: getattr(running, k) for k in RESTART_ONLY})
    before = {p.name for p in running.peers}
    after = [p.name for p in effective.peers]
    changed: list[str] = []
    kept: list[str] = []
    for name in after:
        if name not in before:
            continue
        same = LinkSettings.from_config(running, name) == LinkSettings.from_config(effective,
                                                                                  name)
        (kept if same else changed).append(name)
    return ReloadPlan(effective, added=tuple(n for n in after if n not in before),
                      removed=tuple(sorted(before - set(after))), changed=tuple(changed),
                      kept=tuple(kept), at_restart=at_restart)


def _comparable(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


@dataclass
class ReloadRecord:
    """The last reload, as /status shows it."""

    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ok: bool = True
    error: str | None = None
    plan: ReloadPlan | None = None

    def as_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at.isoformat(), "ok": self.ok}
        if self.error is not None:
            out["error"] = self.error
        if self.plan is not None:
            p = self.plan
            out.update(added=list(p.added), removed=list(p.removed), restarted=list(p.changed),
                       kept=list(p.kept), at_next_restart=list(p.at_restart))
        return out
