"""What a cache sync run reports: per-type statistics and the run's result, plus its options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tagman_base.settings import Settings
from tagman_mirror.store import ChangeCounts

FULL, INCREMENTAL, SMART = "cache_full_sync", "cache_incremental_sync", "cache_smart_sync"


@dataclass(frozen=True)
class CacheOptions:
    """How a sync keeps history; built from the plugin settings (defaults live in ``settings.Settings``)."""

    change_log_days: float = Settings.cache_change_log_days   # prune sync_changes of older runs; 0 keeps all
    soft_delete: bool = Settings.cache_soft_delete             # keep vanished entities with deleted_at set
    soft_delete_days: float = Settings.cache_soft_delete_days  # purge soft-deleted entities after; 0 keeps

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheOptions:
        """The cache options of the plugin settings."""
        return cls(change_log_days=settings.cache_change_log_days, soft_delete=settings.cache_soft_delete,
                   soft_delete_days=settings.cache_soft_delete_days)


@dataclass(frozen=True)
class TypeStats:
    """What one run did to one entity type."""

    fetched: int = 0
    upserted: int = 0      # rows (re)written: created + updated + revived
    deleted: int = 0       # vanished from Stash (removed, or soft-deleted with cacheSoftDelete)
    skipped: bool = False
    note: str = ""
    created: int = 0
    updated: int = 0       # fetched with a different mirrored content (fields or links)
    unchanged: int = 0     # fetched with identical mirrored content: not rewritten
    revived: int = 0       # soft-deleted entities Stash has again
    purged: int = 0        # soft-deleted entities removed for good after cacheSoftDeleteDays
    soft_deleted: int = 0  # soft-deleted entities the mirror holds after the run

    def summary(self) -> str:
        """One line of counts."""
        text = f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, {self.deleted} deleted"
        extra = [f"{n} {w}" for n, w in ((self.revived, "revived"), (self.purged, "purged"),
                                         (self.soft_deleted, "soft-deleted kept")) if n]
        text += "".join(f", {e}" for e in extra) + f" ({self.fetched} fetched"
        return text + (", idle)" if self.skipped else ")")


@dataclass(frozen=True)
class CacheSyncResult:
    """Summary of one cache sync run (``asdict()`` is the task's JSON output)."""

    mode: str
    status: str
    db_path: str
    started: str
    finished: str
    seconds: float
    stash_requests: int
    per_type: dict[str, TypeStats] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    run_id: int = 0
    entities: tuple[str, ...] = ()  # the types this run covered (all when the run had no scope)
    # SQLite total_changes() over the sync work: every row the run inserted, updated or deleted
    # in any table, except its own sync_runs record (written before and after the measurement)
    rows_written: int = 0

    @property
    def created(self) -> int:
        """Entities new to the mirror in total."""
        return sum(s.created for s in self.per_type.values())

    @property
    def updated(self) -> int:
        """Entities whose mirrored content changed in total."""
        return sum(s.updated for s in self.per_type.values())

    @property
    def unchanged(self) -> int:
        """Entities fetched with identical content in total."""
        return sum(s.unchanged for s in self.per_type.values())

    @property
    def fetched(self) -> int:
        """Entities read from Stash in total."""
        return sum(s.fetched for s in self.per_type.values())

    @property
    def upserted(self) -> int:
        """Entities written to the mirror in total."""
        return sum(s.upserted for s in self.per_type.values())

    @property
    def deleted(self) -> int:
        """Entities removed from the mirror in total."""
        return sum(s.deleted for s in self.per_type.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form with totals."""
        out = asdict(self)
        out.update(fetched=self.fetched, upserted=self.upserted, deleted=self.deleted, created=self.created,
                   updated=self.updated, unchanged=self.unchanged)
        return out

    def __str__(self) -> str:
        parts = []
        for table, s in self.per_type.items():
            if s.skipped and not (s.deleted or s.purged):
                parts.append(f"{table} unchanged")
            else:
                parts.append(f"{table} {s.created}+/{s.updated}~/{s.unchanged}=/{s.deleted}-")
        text = (f"Cache {self.mode.removeprefix('cache_').replace('_', ' ')} {self.status} in {self.seconds:.1f} s "
                f"with {self.stash_requests} Stash requests, {self.rows_written} rows written "
                "(created+/updated~/unchanged=/deleted-): " + ", ".join(parts) + ".")
        if self.warnings:
            text += " Warnings: " + " ".join(self.warnings)
        return text


@dataclass
class TypeTally:
    """Mutable counters of one type during a run (the change counts live in the run's recorder)."""

    fetched: int = 0
    upserted: int = 0
    skipped: bool = False
    notes: list[str] = field(default_factory=list)

    def frozen(self, counts: ChangeCounts | None = None, soft_deleted: int = 0) -> TypeStats:
        """The immutable summary, with the recorder's counts of the type."""
        c = counts or ChangeCounts()
        return TypeStats(self.fetched, self.upserted, c.deleted, self.skipped, " ".join(self.notes),
                         created=c.created, updated=c.updated, unchanged=c.unchanged,
                         revived=c.revived, purged=c.purged, soft_deleted=soft_deleted)
