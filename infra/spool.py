"""Durable local spool for events the broker could not take (yet).

SQLite in WAL mode under ``settings.spool_dir``: an append is one small transaction, rows survive
a process crash or restart, and several processes on one host may share the file (SQLite locks).
Only one process drains at a time (an advisory file lock), so two replicas do not race to
redeliver the same rows; a duplicate that slips through anyway is removed downstream by event_id.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    event_id TEXT,
    spooled_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
)
"""


@dataclass(frozen=True)
class SpooledRecord:
    """One record ready for the producer: full topic name, key and serialized event."""

    topic: str
    key: bytes | None
    value: bytes
    event_id: str | None = None
    seq: int | None = None


class Spool:
    def __init__(self, directory: Path, name: str = "events") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{name}.sqlite3"
        self._lock = threading.Lock()
        # one connection shared by this process' threads, serialized by _lock
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed append survives a process crash (not a power cut)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._drain_lock_path = self.directory / f"{name}.drain.lock"
        self._drain_fd: int | None = None

    def append(self, records: Iterable[SpooledRecord]) -> int:
        rows = [(r.topic, r.key, r.value, r.event_id) for r in records]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO spool (topic, key, value, event_id) VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def peek(self, limit: int = 500) -> list[SpooledRecord]:
        """The oldest rows, left in place until ``remove`` confirms they reached the broker."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, topic, key, value, event_id FROM spool ORDER BY seq LIMIT ?", (limit,)
            )
            return [SpooledRecord(topic=t, key=k, value=v, event_id=e, seq=s) for s, t, k, v, e in cur]

    def remove(self, seqs: Iterable[int]) -> None:
        ids = [(s,) for s in seqs]
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM spool WHERE seq = ?", ids)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM spool").fetchone()[0]

    def oldest_age_s(self, now: float | None = None) -> float | None:
        """Seconds the oldest undelivered event has waited (None when the spool is empty)."""
        import time

        with self._lock:
            oldest = self._db.execute("SELECT min(spooled_at) FROM spool").fetchone()[0]
        return None if oldest is None else max(0.0, (now or time.time()) - oldest)

    def try_become_drainer(self) -> bool:
        """Take the per-spool drain lock (held until close); False when another process has it."""
        if self._drain_fd is not None:
            return True
        fd = os.open(self._drain_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._drain_fd = fd
        return True

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._drain_fd is not None:
            os.close(self._drain_fd)  # closing releases the flock
            self._drain_fd = None
