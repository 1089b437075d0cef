"""The records that cross a seam: what the source reads, what a page carries, what apply and
a batch report. Frozen where they travel between threads; kept here so each stage imports
its inputs and outputs from one place rather than from the stage that makes them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

SegmentKind = Literal["upsert", "delete", "withdraw"]   # withdraw: no longer ours to hold
BatchKind = Literal["delta", "initial", "backfill", "retry"]   # why a batch is read
Origins = Literal["peer", "any"]


@dataclass(frozen=True)
class Segment:
    """Rows of one table and kind inside a page, as COPY text."""

    table: str
    kind: SegmentKind
    columns: tuple[str, ...]
    data: bytes                   # the rows' COPY data (binary: without header and trailer)
    rows: int
    binary: bool = False
    # column groups (policy ``column_groups``): each merges as one unit
    groups: tuple[tuple[str, ...], ...] = ()
    # only the columns its range changed (protocol 4): it updates rows of the same
    # incarnation and leaves the others' keys to be read whole (``PageResult.missing``)
    narrow: bool = False


@dataclass(frozen=True)
class Page:
    """What one local transaction applies."""

    segments: tuple[Segment, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)


@dataclass(frozen=True)
class Snapshot:
    token: str                    # pg_snapshot text: the next token
    source_now: datetime          # the peer's clock, for lag without clock skew
    current: str = ""             # the batch's own snapshot (``token`` unless bounded)


@dataclass(frozen=True)
class Pending:
    """What the journal holds for us beyond the token."""

    changes: dict[str, int]               # per table: journaled changes (a key may repeat)
    oldest_change: datetime | None
    keys: dict[str, int] = field(default_factory=dict)   # distinct keys, where asked
    deletes: frozenset[str] = frozenset()   # tables with a delete in the range
    sizes: dict[str, float] = field(default_factory=dict)   # the planner's row estimate
    # tables whose range holds only updates (and deletes) with known change masks: the
    # union of those masks (protocol 4)
    masks: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.changes.values())

    def wide(self, share: float) -> frozenset[str]:
        """Tables whose changes reach ``share`` of their rows: reading them by one scan of
        the table beats probing its key index once per change."""
        return frozenset(t for t, n in self.changes.items()
                         if self.sizes.get(t, -1) > 0 and n >= share * self.sizes[t])


@dataclass(frozen=True)
class ReadPlan:
    """Where the keys of a read come from: the journal since a token, all rows, or a list."""

    token: str | None = None
    keys: Sequence[UUID] | None = None
    upto: str | None = None        # the range's end (the owner's bound), else the snapshot

    @property
    def initial(self) -> bool:
        return self.token is None and self.keys is None


@dataclass
class PageResult:
    applied: Counter[tuple[str, str]] = field(default_factory=Counter)   # (table, op) -> rows
    conflicts: Counter[str] = field(default_factory=Counter)             # table -> rows
    dead_letters: Counter[str] = field(default_factory=Counter)          # table -> rows
    skipped: Counter[str] = field(default_factory=Counter)               # table -> stale rows
    retries: int = 0          # page attempts rolled back by a deadlock or lock timeout
    # keys of narrow segments this region holds no row of the same incarnation for: the
    # link reads them whole before the batch's token moves
    missing: dict[str, list[UUID]] = field(default_factory=dict)

    def add(self, other: PageResult) -> None:
        self.retries += other.retries
        for table, keys in other.missing.items():
            self.missing.setdefault(table, []).extend(keys)
        self.applied.update(other.applied)
        self.conflicts.update(other.conflicts)
        self.dead_letters.update(other.dead_letters)
        self.skipped.update(other.skipped)


@dataclass(frozen=True)
class BatchResult:
    peer: str
    rows: int
    token: str
    initial: bool
    full: bool
    complete: bool
    lag_seconds: float
    source_now: datetime | None
    applied: dict[tuple[str, str], int] = field(default_factory=dict)
    conflicts: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    retries: int = 0       # page transactions that gave way to a lock and ran again


@dataclass(frozen=True)
class Streamed:
    """Pages applied by ``PageSink.stream``, and the last one, held back."""

    result: PageResult
    read: Counter[str]          # rows read per table
    rows: int
    last: Page | None
    complete: bool
