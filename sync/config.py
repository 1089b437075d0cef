"""Region configuration (``region.yaml``), validated at load with file, line and key.

Secrets never live in the file: a URL may say ``${VAR}``, and a password may come from
``password_env`` or ``password_file``. Passwords are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import psycopg.conninfo
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from sync import yamlfile
from sync.errors import ConfigError

RegionName = str


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="postgresql://user@host:port/db (may use ${ENV_VAR})")
    password_env: str | None = None
    password_file: Path | None = None

    def conninfo(self, *, where: str) -> str:
        """libpq connection string with the secret filled in (never log it). ``where`` names
        the URL's key (``database.url``, ``peers[eu-north].url``) in errors."""
        url = yamlfile.expand_env(self.url, where=where)
        extra: dict[str, str] = {}
        password = self.password(where=where.rsplit(".", 1)[0])
        if password is not None:
            extra["password"] = password.get_secret_value()
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            # libpq's message quotes the URL's text, which may hold a password: never echo it
            raise ConfigError("invalid database URL (check its syntax and percent-encoding; "
                              "put the password in password_env or password_file)",
                              key=where) from exc
        for port in str(params.get("port", "5432")).split(","):
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"port {port!r} is not a TCP port (1-65535)", key=where)
        return psycopg.conninfo.make_conninfo(url, **extra)

    def password(self, *, where: str = "database") -> SecretStr | None:
        if self.password_env:
            if self.password_env not in os.environ:
                raise ConfigError(f"environment variable {self.password_env} is not set",
                                  key=f"{where}.password_env")
            return SecretStr(os.environ[self.password_env])
        if self.password_file:
            try:
                return SecretStr(self.password_file.read_text().strip())
            except OSError as exc:
                raise ConfigError(f"cannot read password file {self.password_file}: "
                                  f"{exc.strerror}", key=f"{where}.password_file") from exc
        return None

    def safe_url(self) -> str:
        """The URL with any inline password masked, for logs."""
        try:
            params = psycopg.conninfo.conninfo_to_dict(
                yamlfile.expand_env(self.url, where="url"))
        except Exception:
            return "<unparseable url>"
        host, port, db = params.get("host", ""), params.get("port", ""), params.get("dbname", "")
        return f"postgresql://{params.get('user', '')}@{host}:{port}/{db}"


class PeerConfig(Endpoint):
    name: RegionName = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    max_rows_per_second: float | None = Field(
        None, gt=0, description="apply at most this many rows a second from this peer "
                                "(a token bucket; bursts of one second)")
    origins: Literal["peer", "any"] = Field(
        "peer", description="peer: pull only what the peer authored (mesh; default). "
                            "any: pull every origin but our own (a spoke pulling from its hub).")


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(9187, ge=0, le=65535, description="0 disables the HTTP endpoint")
    token_env: str | None = Field(None, description="environment variable holding a bearer "
                                                    "token that /metrics and /status require")
    token_file: Path | None = Field(None, description="file holding that token")

    def token(self) -> SecretStr | None:
        """The bearer token /metrics and /status require, if one is configured."""
        if self.token_env:
            if self.token_env not in os.environ:
                raise ConfigError(f"environment variable {self.token_env} is not set",
                                  key="metrics.token_env")
            return SecretStr(os.environ[self.token_env])
        if self.token_file:
            try:
                return SecretStr(self.token_file.read_text().strip())
            except OSError as exc:
                raise ConfigError(f"cannot read token file {self.token_file}: {exc.strerror}",
                                  key="metrics.token_file") from exc
        return None


class BreakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    failures: int = Field(5, ge=1, le=1000,
                          description="consecutive failed batches that open a peer's breaker")
    open_seconds: float = Field(60.0, gt=0, le=3600,
                                description="the longest it stays open before one probe")
    first_probe_seconds: float = Field(
        5.0, gt=0, le=3600, description="the first probe after it opens; each failed probe "
        "doubles the wait, up to open_seconds")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(v: object) -> object:
    """``7d``, ``12h``, ``30m``, ``45s`` or a number of seconds; ``null`` keeps forever."""
    if isinstance(v, str) and v[-1:] in _UNITS and v[:-1].replace(".", "", 1).isdigit():
        return float(v[:-1]) * _UNITS[v[-1]]
    return v


Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class ServeConfig(BaseModel):
    """What this region grants each destination role at most (the owner's bulkhead)."""

    model_config = ConfigDict(extra="forbid")
    max_connections: int = Field(5, ge=-1, le=1000,
                                 description="CONNECTION LIMIT of each destination role (-1: none)")
    max_rows_per_minute: int | None = Field(
        None, ge=1, description="rows served to one destination per minute; over it, its "
                                "reader is told to retry after the window (null: no cap)")


class RetentionConfig(BaseModel):
    """How long this region keeps what it records (durations like ``7d``, ``12h``, or
    seconds; ``null``: forever)."""

    model_config = ConfigDict(extra="forbid")
    journal: Duration = Field(
        7 * 86400, description="journal entries and tombstones older than this, once every "
                               "peer has consumed them, are pruned")
    expire_after: Duration = Field(
        30 * 86400, description="older than this they are pruned even if a peer has not "
                                "consumed them: that peer's token expires (it resyncs)")
    conflict_log: Duration | None = Field(30 * 86400, description="losing versions")
    integration_log: Duration | None = Field(30 * 86400, description="applied batches")
    dead_letter: Duration | None = Field(30 * 86400,
                                         description="dead letters not retried since")
    egress_log: Duration | None = Field(None, description="the transfer record (auditors)")
    resync_on_expiry: bool = Field(
        True, description="a peer whose token expired is reloaded at once (no loss, no "
                          "resurrection); false: it stops until `regionsync resync`")
    interval: Duration = Field(60, description="seconds between pruning rounds")
    batch: int = Field(1000, ge=1, le=100_000, description="rows per pruning statement")

    @model_validator(mode="after")
    def _ordered(self) -> RetentionConfig:
        if self.expire_after < self.journal:
            raise ValueError("expire_after must be at least journal")
        return self


class RegionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: RegionName = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    database: Endpoint
    peers: list[PeerConfig] = Field(default_factory=list)
    policy_dir: Path = Path("policies")
    poll_interval: float = Field(1.0, gt=0, le=3600, description="seconds between polls")
    page_size: int = Field(5000, ge=1, le=1_000_000,
                           description="rows per local transaction; a full page drains at once")
    apply_connections: int = Field(
        2, ge=1, le=16, description="local connections per peer that apply the pages of a "
                                    "large batch concurrently (pages of one table; tables "
                                    "stay in foreign-key order)")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    table_priorities: dict[str, int] = Field(
        default_factory=dict, description="table -> priority (default 0): within a batch, "
                                          "higher first where foreign keys allow (e.g. "
                                          "account before bulk shipment history)")
    forward: bool = Field(
        True, description="journal rows applied from peers so that regions pulling "
                          "`origins: any` from us receive them (a hub needs this); a mesh "
                          "member or spoke may turn it off for faster apply")
    destinations: list[RegionName] = Field(
        default_factory=list, description="regions that pull from this one, beyond `peers` "
                                          "(a receive-only region lists its sources, and they "
                                          "list it here)")
    egress: bool = Field(
        True, description="make this database enforce the policy for each destination "
                          "(roles regionsync_to_<region>, column grants, row-level security) "
                          "whenever a policy is loaded; needs the tables' owner")
    capture: Literal["auto", "c", "plpgsql"] = Field(
        "auto", description="capture triggers: the C extension ext/regionsync_capture where "
                            "the server has it (auto), required (c), or PL/pgSQL; applied "
                            "by `regionsync migrate`")
    origin_numbers: dict[RegionName, int] = Field(
        default_factory=dict, description="region -> its number (1-2047) in column versions; "
                                          "a region not named takes a hash of its name. The "
                                          "same map in every region's config; needed only "
                                          "when two names hash alike (`migrate` says so)")
    leader_check_interval: float = Field(
        2.0, gt=0, le=60, description="seconds between leader-lock checks (standby takeover)")
    source_file: Path | None = Field(None, exclude=True)

    def destination_regions(self) -> list[str]:
        """Every region that may pull from this one: the peers and ``destinations``."""
        return sorted({*(p.name for p in self.peers), *self.destinations})

    @field_validator("peers", mode="before")
    @classmethod
    def _empty_peers(cls, v: object) -> object:
        return [] if v is None else v  # `peers:` with nothing under it: a receive-less region

    @field_validator("origin_numbers")
    @classmethod
    def _origin_numbers(cls, v: dict[str, int]) -> dict[str, int]:
        for name, number in v.items():
            if not 1 <= number <= 2047:
                raise ValueError(f"{name}: {number} is not an origin number (1-2047)")
        taken: dict[int, str] = {}
        for name, number in sorted(v.items()):
            if number in taken:
                raise ValueError(f"{taken[number]} and {name} both have number {number}")
            taken[number] = name
        return v

    @model_validator(mode="after")
    def _peers_distinct(self) -> RegionConfig:
        names = [p.name for p in self.peers]
        if self.region in names:
            raise ValueError(f"region {self.region!r} lists itself as a peer")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"peer listed twice: {', '.join(dup)}")
        return self


def load_config(path: Path) -> RegionConfig:
    path = Path(path)
    doc = yamlfile.load(path)
    cfg = yamlfile.validate(RegionConfig, doc, path)
    base = path.resolve().parent
    updates: dict[str, object] = {"source_file": path}
    if not cfg.policy_dir.is_absolute():
        updates["policy_dir"] = base / cfg.policy_dir
    cfg = cfg.model_copy(update=updates)
    for ep in [cfg.database, *cfg.peers]:
        if ep.password_file is not None and not ep.password_file.is_absolute():
            ep.password_file = base / ep.password_file
    # Resolve every URL and secret now, so a missing variable or unreadable file is one
    # error naming file, line and key at start-up, not a failure minutes later.
    endpoints = [(("database",), "database.url", cfg.database)] + [
        (("peers", i), f"peers[{p.name}].url", p) for i, p in enumerate(cfg.peers)]
    if cfg.metrics.token_file is not None and not cfg.metrics.token_file.is_absolute():
        cfg.metrics.token_file = base / cfg.metrics.token_file
    try:
        cfg.metrics.token()
    except ConfigError as exc:
        field = (exc.key or "metrics").rsplit(".", 1)[-1]
        raise ConfigError(exc.detail, file=str(path), line=yamlfile.line_of(
            doc, ("metrics", field)), key=exc.key) from exc
    for loc, where, ep in endpoints:
        try:
            ep.conninfo(where=where)
        except ConfigError as exc:
            field = (exc.key or "url").rsplit(".", 1)[-1]
            raise ConfigError(exc.detail, file=str(path),
                              line=yamlfile.line_of(doc, (*loc, field)) or
                              yamlfile.line_of(doc, loc), key=exc.key) from exc
    return cfg


def edit_peers(path: Path, *, add: PeerConfig | None = None,
               remove: str | None = None) -> bool:
    """Add a peer to, or remove a region from (``peers`` and ``destinations``), the config
    file, keeping its comments and layout (a round trip through ruamel.yaml). The edited
    text is validated before it replaces the file (atomically, same mode); returns whether
    anything changed. Raises ``ConfigError`` naming the file when it cannot."""
    path = Path(path)
    doc = yamlfile.load(path)
    peers = doc.get("peers") or []
    changed = False
    if add is not None:
        if any(p.get("name") == add.name for p in peers):
            return False
        entry = {k: str(v) for k, v in add.model_dump(exclude_defaults=True).items()
                 if v is not None}
        peers.append({"name": add.name, **entry})
        doc["peers"] = peers
        changed = True
    if remove is not None:
        kept = [p for p in peers if p.get("name") != remove]
        if len(kept) != len(peers):
            peers[:] = kept
            changed = True
        destinations = doc.get("destinations") or []
        if remove in destinations:
            destinations.remove(remove)
            changed = True
    if not changed:
        return False
    yamlfile.validate(RegionConfig, doc, path)
    yamlfile.dump(doc, path)
    return True
