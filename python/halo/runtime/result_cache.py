"""The persistent result cache: results of pure node requests, kept across runs in one SQLite file.

One table, `results(key, node, value, check, created, hits)`: `key` is the SHA-256 of a node's
canonical request (`result_keys.py`), `value` the result as exact JSON (`cached_values.py`),
`check` a digest of the value (a damaged entry is a miss, never a wrong value), `node` the node's
declared name (for `halo cache stats`).

Concurrency: SQLite in WAL mode with a busy timeout, so several processes read and write one file at
once (readers never wait for a writer; writers take turns). Writes are batched: `put` queues an entry
and the queue is written in one transaction every `flush_entries` entries or `flush_s` seconds, at the
end of each run (`flush`) and on `close`, so a 10,000-row run commits a few dozen times, not per
call (synchronous=NORMAL: a commit in WAL mode does not fsync). A killed run loses at most the queue;
the entries written are whole (SQLite's transactions).

Never a crash: a file that is not a SQLite database, is damaged, belongs to another format version or
cannot be opened is reported once on stderr (naming the file and what is wrong) and the store turns
into a pass-through: every lookup misses, nothing is written, the run goes on without it. `clear`
removes the file (`halo cache clear`).

Location: `$HALO_RESULT_CACHE_DIR/results.sqlite3` if set, else `<halo cache dir>/results/results.sqlite3`
(the halo cache dir is `$HALO_CACHE_DIR`, else `~/.cache/halo`); a `cache_dir` given to `halo.compile`
or `halo run --cache-dir` replaces the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo.runtime.cached_values import Uncacheable, decode, encode

FORMAT = 1  # PRAGMA user_version of the files this code writes
FILE_NAME = "results.sqlite3"
FLUSH_ENTRIES = 256
FLUSH_S = 0.5
BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another process's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    value TEXT NOT NULL,
    "check" TEXT NOT NULL,
    created REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""
_COLUMNS = ("key", "node", "value", "check", "created", "hits")
_SIDE_FILES = ("-wal", "-shm", "-journal")


def cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file: in `cache_dir` if given, else `$HALO_RESULT_CACHE_DIR`, else `<halo cache dir>/results`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / FILE_NAME
    moved = os.environ.get("HALO_RESULT_CACHE_DIR")
    if moved:
        return Path(moved).expanduser() / FILE_NAME
    halo_dir = os.environ.get("HALO_CACHE_DIR")  # the rule of output_history.history_path
    base = Path(halo_dir).expanduser() if halo_dir else Path.home() / ".cache" / "halo"
    return base / "results" / FILE_NAME


class ResultCache:
    """A result store on one SQLite file; thread-safe. `problem` says why it is bypassed (None: it works)."""

    def __init__(self, path: Path, *, flush_entries: int = FLUSH_ENTRIES, flush_s: float = FLUSH_S) -> None:
        self.path = Path(path)
        self.flush_entries = flush_entries
        self.flush_s = flush_s
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._queue: dict[str, tuple[str, str, str, float]] = {}  # key -> (node, value, check, created)
        self._hits: Counter[str] = Counter()  # key -> hits not written yet
        self._damaged_reported = False
        self._last_flush = time.monotonic()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = _open(self.path)
        except (sqlite3.Error, OSError, _Foreign) as exc:
            self._give_up(exc)

    @property
    def usable(self) -> bool:
        return self.problem is None

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, the stored value) or (False, None)."""
        with self._lock:
            if self._conn is None:
                return False, None
            queued = self._queue.get(key)
            try:
                if queued is not None:
                    text = queued[1]
                else:
                    row = self._conn.execute('SELECT value, "check" FROM results WHERE key = ?', (key,)).fetchone()
                    if row is None:
                        return False, None
                    text, check = row
                    if check != _check(text):
                        self._report_damaged(key)
                        return False, None
                value = decode(text)
            except sqlite3.Error as exc:
                self._give_up(exc)
                return False, None
            except (ValueError, TypeError, KeyError):  # an entry this code did not write
                self._report_damaged(key)
                return False, None
            self._hits[key] += 1
            return True, value

    def put(self, key: str, node: str, value: Any) -> bool:
        """Queue `value` as the result of request `key` of node `node`; False if it was not stored (the
        store is bypassed, the value cannot be written exactly, or this key is queued already)."""
        try:
            text = encode(value)
        except (Uncacheable, RecursionError):
            return False
        with self._lock:
            if self._conn is None or key in self._queue:
                return False
            self._queue[key] = (node, text, _check(text), time.time())
            due = len(self._queue) >= self.flush_entries or time.monotonic() - self._last_flush >= self.flush_s
        if due:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the queued entries and hit counts in one transaction (another process's transaction is
        waited for up to the busy timeout; past it the queue is kept for the next flush)."""
        with self._lock:
            self._last_flush = time.monotonic()
            if self._conn is None or not (self._queue or self._hits):
                return
            entries = [(key, *entry) for key, entry in self._queue.items()]
            hits = [(count, key) for key, count in self._hits.items()]
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        'INSERT INTO results (key, node, value, "check", created) VALUES (?, ?, ?, ?, ?)'
                        ' ON CONFLICT(key) DO UPDATE SET node = excluded.node, value = excluded.value,'
                        ' "check" = excluded."check"',
                        entries,
                    )
                    self._conn.executemany("UPDATE results SET hits = hits + ? WHERE key = ?", hits)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if _busy(exc):
                    return  # another process holds the file past the timeout: try again at the next flush
                self._give_up(exc)
                return
            except sqlite3.Error as exc:
                self._give_up(exc)
                return
            self._queue.clear()
            self._hits.clear()

    def close(self) -> None:
        """Flush, then close the file; what a busy file kept queued is dropped (with a note)."""
        self.flush()
        with self._lock:
            if self._conn is None:
                return
            if self._queue:
                print(
                    f"halo: result cache {self.path} stayed locked by another process: {len(self._queue)} new "
                    "results were not stored (the outputs are not affected)",
                    file=sys.stderr,
                )
            self._conn.close()
            self._conn = None
            self._queue.clear()
            self._hits.clear()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _give_up(self, exc: BaseException) -> None:
        """Report once what is wrong with the file and bypass it from now on (caller holds the lock or
        is the constructor)."""
        what = str(exc) or type(exc).__name__
        if self.problem is None:
            print(
                f"halo: warning: the result cache {self.path} cannot be used ({what}); running without it"
                f" (`halo cache clear` removes it)",
                file=sys.stderr,
            )
        self.problem = what
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None
        self._queue.clear()
        self._hits.clear()

    def _report_damaged(self, key: str) -> None:
        if not self._damaged_reported:
            self._damaged_reported = True
            print(
                f"halo: warning: the result cache {self.path} holds a damaged entry ({key[:16]}...): treated as"
                " a miss and recomputed",
                file=sys.stderr,
            )


@dataclass(frozen=True)
class CacheStats:
    """What `halo cache stats` prints."""

    path: Path
    exists: bool
    entries: int = 0
    hits: int = 0
    size_bytes: int = 0  # the file and its WAL
    by_node: dict[str, int] = field(default_factory=dict)  # entries per node name

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exists": self.exists,
            "entries": self.entries,
            "hits": self.hits,
            "size_bytes": self.size_bytes,
            "by_node": dict(self.by_node),
        }


class CacheFileError(Exception):
    """The cache file exists but cannot be read (what `halo cache stats` reports)."""


def read_stats(path: Path) -> CacheStats:
    """Entries, hits, size and entries per node of the cache file at `path` (nothing is created)."""
    if not path.exists():
        return CacheStats(path, exists=False)
    size = sum(p.stat().st_size for p in _files(path) if p.exists())
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            _check_format(conn)
            entries, hits = conn.execute("SELECT count(*), coalesce(sum(hits), 0) FROM results").fetchone()
            by_node = dict(conn.execute("SELECT node, count(*) FROM results GROUP BY node ORDER BY node").fetchall())
        finally:
            conn.close()
    except (sqlite3.Error, _Foreign) as exc:
        raise CacheFileError(f"the result cache {path} cannot be read ({exc}); `halo cache clear` removes it") from None
    return CacheStats(path, True, int(entries), int(hits), size, by_node)


def clear(path: Path) -> bool:
    """Remove the cache file (and its WAL); False if there was none."""
    existed = False
    for file in _files(path):
        try:
            file.unlink()
            existed = existed or file == path
        except FileNotFoundError:
            pass
    return existed


class _Foreign(Exception):
    """A SQLite file that is not a result cache of this format."""


def _open(path: Path) -> sqlite3.Connection:
    """A connection to the cache file (created with its table if new), checked to be of this format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are the explicit BEGIN IMMEDIATE ... COMMIT of `flush`.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if not _is_empty(conn):  # garbage fails here ("file is not a database")
            _check_format(conn)  # a foreign file is refused before anything in it changes
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise _Foreign(f"SQLite would not use WAL mode on it (journal_mode {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")  # two processes creating the file at once: one creates, one sees it
        try:
            if _is_empty(conn):
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {FORMAT}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        _check_format(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _is_empty(conn: sqlite3.Connection) -> bool:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def _check_format(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(results)"))
    if version != FORMAT or columns != _COLUMNS:
        raise _Foreign(f"not a Halo result cache of format {FORMAT} (user_version {version}, columns {columns})")


def _check(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _files(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)]
