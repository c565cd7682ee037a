"""SQLite results store: one row per finished run, keyed by the hash of its config.

Each run is written in its own transaction the moment it finishes, so a sweep killed at any
point (Ctrl-C, kill -9) loses only unfinished runs, and re-running skips finished ones.

What SQLite guarantees is used fully:

* Opening reads before it writes: a file that is not SQLite, fails ``PRAGMA quick_check``, or holds
  tables that are not adaptact's (or another program's ``application_id``) is refused in one line
  with not one byte changed (its journal mode included). adaptact's databases carry its
  ``application_id``; those written before it are recognised by their one ``runs`` table.
* Creating and migrating the schema is one ``BEGIN IMMEDIATE`` transaction, so any number of
  processes may open a fresh database at once.
* A report reads with ``read_runs``, which writes nothing: no migration, no journal-mode switch,
  SQLite's read-only mode (immutable on read-only media where nothing can be writing), so a
  committed database, another user's or one on read-only media reads as it is.
* Sweeps sharing a database claim the runs they train (table ``claims``: the run, its owner and
  when), so two sweeps never train one run twice; a claim whose process has died (same host) is
  taken over.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Self

from ..errors import UserError

__all__ = ["APPLICATION_ID", "COLUMNS", "STATUSES", "ResultStore", "StoreError", "owner", "read_runs"]

APPLICATION_ID = 0x41644163  # "AdAc" in the SQLite header: adaptact wrote this file

COLUMNS = ("key", "dataset", "model", "activation", "policy", "optimizer", "lr", "seed", "epochs",
           "batch_size", "device", "amp", "compile", "protocol", "scale", "loss", "validation", "status",
           "error", "first_epoch_acc", "best_epoch", "best_acc", "last_acc", "wall_time", "epoch_time",
           "activation_params", "peak_memory", "backend", "train_loss", "val_acc", "test_acc", "warnings",
           "versions", "finished_at", "iters", "eval_every", "metric", "evals", "val_loss", "test_loss",
           "first_loss", "best_loss", "last_loss", "iter_time", "saved_memory", "source", "start",
           "start_activation", "init", "source_acc", "converted_acc", "source_loss", "converted_loss",
           "timed_under")
STATUSES = ("ok", "diverged", "failed")
_INTS = ("seed", "epochs", "batch_size", "protocol", "best_epoch", "activation_params", "peak_memory",
         "compile", "iters", "eval_every", "saved_memory")
_REALS = ("lr", "validation", "first_epoch_acc", "best_acc", "last_acc", "wall_time", "epoch_time",
          "finished_at", "first_loss", "best_loss", "last_loss", "iter_time", "source_acc", "converted_acc",
          "source_loss", "converted_loss")
_LISTS = ("train_loss", "val_acc", "test_acc", "evals", "val_loss", "test_loss")
_NUMBERS = ("lr", "first_epoch_acc", "best_acc", "last_acc", "wall_time", "epoch_time", "first_loss",
            "best_loss", "last_loss", "iter_time", "source_acc", "converted_acc", "source_loss",
            "converted_loss")
_JSON = ("train_loss", "val_acc", "test_acc", "warnings", "versions", "evals", "val_loss", "test_loss")

# what a row that does not say has (rows of classification by epochs leave the language-model fields out)
_OPTIONAL = {"backend": "", "warnings": [], "iters": 0, "eval_every": 0, "metric": "accuracy", "evals": [],
             "val_loss": [], "test_loss": [], "first_loss": 0.0, "best_loss": 0.0, "last_loss": 0.0,
             "iter_time": 0.0, "saved_memory": -1, "source": "", "start": "", "start_activation": "",
             "init": "", "source_acc": -1.0, "converted_acc": -1.0, "source_loss": -1.0,
             "converted_loss": -1.0, "timed_under": ""}

_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed_at REAL NOT NULL)
"""
_TABLES = {"runs", "claims"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, dataset TEXT NOT NULL, model TEXT NOT NULL, activation TEXT NOT NULL,
    policy TEXT NOT NULL DEFAULT 'all', optimizer TEXT NOT NULL, lr REAL NOT NULL, seed INTEGER NOT NULL,
    epochs INTEGER NOT NULL, batch_size INTEGER NOT NULL, protocol INTEGER NOT NULL,
    first_epoch_acc REAL NOT NULL, best_acc REAL NOT NULL, wall_time REAL NOT NULL, train_loss TEXT NOT NULL,
    test_acc TEXT NOT NULL, versions TEXT NOT NULL, finished_at REAL NOT NULL
)
"""
# Columns added after the first schema, with the values rows written before them take (protocol 1:
# no validation split, best_acc was the best test accuracy over the epochs).
_ADDED = {
    "policy": "TEXT NOT NULL DEFAULT 'all'",
    "device": "TEXT NOT NULL DEFAULT 'cpu'",
    "amp": "TEXT NOT NULL DEFAULT ''",
    "compile": "INTEGER NOT NULL DEFAULT 0",
    "status": "TEXT NOT NULL DEFAULT 'ok'",
    "error": "TEXT NOT NULL DEFAULT ''",
    "best_epoch": "INTEGER NOT NULL DEFAULT 0",
    "last_acc": "REAL NOT NULL DEFAULT 0",
    "epoch_time": "REAL NOT NULL DEFAULT 0",
    "activation_params": "INTEGER NOT NULL DEFAULT -1",
    "peak_memory": "INTEGER NOT NULL DEFAULT -1",
    "val_acc": "TEXT NOT NULL DEFAULT '[]'",
    "scale": "TEXT NOT NULL DEFAULT 'standard'",
    "loss": "TEXT NOT NULL DEFAULT 'cross_entropy'",
    "validation": "REAL NOT NULL DEFAULT 0.1",
    "backend": "TEXT NOT NULL DEFAULT ''",  # what the adaptive activations ran; '' in rows from before
    "warnings": "TEXT NOT NULL DEFAULT '[]'",
    # training by iterations, and language models (metric "loss": nats per character, lower is better)
    "iters": "INTEGER NOT NULL DEFAULT 0",
    "eval_every": "INTEGER NOT NULL DEFAULT 0",
    "metric": "TEXT NOT NULL DEFAULT 'accuracy'",
    "evals": "TEXT NOT NULL DEFAULT '[]'",
    "val_loss": "TEXT NOT NULL DEFAULT '[]'",
    "test_loss": "TEXT NOT NULL DEFAULT '[]'",
    "first_loss": "REAL NOT NULL DEFAULT 0",
    "best_loss": "REAL NOT NULL DEFAULT 0",
    "last_loss": "REAL NOT NULL DEFAULT 0",
    "iter_time": "REAL NOT NULL DEFAULT 0",
    "saved_memory": "INTEGER NOT NULL DEFAULT -1",  # bytes saved for backward by one training step
    # fine-tuning (experiments/finetune.py): the pretraining's data, run key and activation, the
    # conversion's init and the source test accuracy before and after it (-1: no conversion)
    "source": "TEXT NOT NULL DEFAULT ''",
    "start": "TEXT NOT NULL DEFAULT ''",
    "start_activation": "TEXT NOT NULL DEFAULT ''",
    "init": "TEXT NOT NULL DEFAULT ''",
    "source_acc": "REAL NOT NULL DEFAULT -1",
    "converted_acc": "REAL NOT NULL DEFAULT -1",
    # a language model's conversion: the source's test loss before and after it (-1: no conversion)
    "source_loss": "REAL NOT NULL DEFAULT -1",
    "converted_loss": "REAL NOT NULL DEFAULT -1",
    # what shared the machine while the run was timed (``sweep.load``; '' in rows from before)
    "timed_under": "TEXT NOT NULL DEFAULT ''",
}


def _foreign_value(row: dict) -> str | None:
    """The first column whose value adaptact could not have written (SQLite stores any type in
    any column), or None."""
    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    for c in COLUMNS:
        v = row[c]
        if c in _INTS and not (isinstance(v, int) and not isinstance(v, bool)):
            return c
        if c in _REALS and not number(v):
            return c
        if c in _LISTS and not (isinstance(v, list) and all(number(x) for x in v)):
            return c
        if c == "versions" and not isinstance(v, dict):
            return c
        if c == "warnings" and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return c
        if c not in _INTS + _REALS + _JSON and not isinstance(v, str):
            return c
    return None


class StoreError(UserError):
    """A results database that cannot be used: not SQLite, not ours, unreadable or unwritable."""


def owner() -> str:
    """This process, as a claim names it: host, pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(claimant: str) -> bool:
    """Whether the process that made a claim may still be running (another host's: assumed so)."""
    host, _, pid = claimant.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` and writes nothing to it. SQLite's own read-only mode keeps
    its locking, so a sweep writing at the same time is read consistently; it needs the WAL index
    file beside the database, which a folder on read-only media cannot hold. There, where neither
    the index nor a write-ahead log with content exists (so no process can be writing), the file
    is read as immutable; a log that cannot be read with it is refused, never left out."""
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError as err:
        if "unable to open" not in str(err) or Path(f"{path}-shm").exists():
            raise
    log = Path(f"{path}-wal")
    if log.exists() and log.stat().st_size > 0:
        raise StoreError(f"{path}: its write-ahead log ({log.name}) holds runs that cannot be read in a "
                         f"folder SQLite may not write to; copy the database with its -wal file to a "
                         f"writable folder")
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)


def _refuse_unless_ours(path: Path) -> None:
    """Read-only checks of an existing file, before anything writes to it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise StoreError(f"{path}: not an SQLite file, so no results database; not touched")
    db = _read_only(path)
    try:
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                  if not n.startswith("sqlite_")}
        app = db.execute("PRAGMA application_id").fetchone()[0]
        if app not in (0, APPLICATION_ID):
            raise StoreError(f"{path}: another program's SQLite file (application_id {app:#x}); not touched")
        foreign = sorted(tables - _TABLES)
        if foreign or (tables and "runs" not in tables):
            names = ", ".join(foreign or sorted(tables))
            raise StoreError(f"{path}: its tables are not adaptact's ({names}); not touched")
        if "runs" in tables:
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            missing = set(COLUMNS) - columns - set(_ADDED)
            if missing:
                raise StoreError(f"{path}: its table 'runs' is not adaptact's (no "
                                 f"{', '.join(sorted(missing))}); not touched")
        check = [r for (r,) in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise StoreError(f"{path}: the database is damaged (PRAGMA quick_check: {check[0]}); "
                             f"not touched: restore it from a copy, or use another --db")
    finally:
        db.close()


def _added_value(column: str, protocol: int) -> object:
    """What a row written before ``column`` existed holds there (``_ADDED``'s default; protocol 1
    had no validation split)."""
    if column == "validation" and protocol < 2:
        return 0.0
    kind, _, default = _ADDED[column].partition(" DEFAULT ")
    if default.startswith("'"):
        return default.strip("'")
    return float(default) if kind.startswith("REAL") else int(default)


def _parsed(path: Path, row: dict) -> dict:
    """A stored row as ``ResultStore.rows`` gives it; a StoreError where adaptact could not have
    written it."""
    try:
        for c in _JSON:
            row[c] = json.loads(row[c])
    except (json.JSONDecodeError, TypeError) as err:
        raise StoreError(f"{path}: row {row['key']!r} is not one adaptact wrote ({err})") from None
    bad = _foreign_value(row)
    if bad:
        raise StoreError(f"{path}: row {row['key']!r} is not one adaptact wrote ({bad}: {row[bad]!r:.60})")
    row["compile"] = bool(row["compile"])
    return row


_ORDER = "ORDER BY dataset, model, activation, optimizer, lr DESC, seed"


def read_runs(path: str | Path) -> list[dict]:
    """The runs of the results database at ``path`` as ``ResultStore.rows`` gives them, read
    without writing to the database (no migration, no change of journal mode), so a database on
    read-only media, another user's or a committed one reads as it is; the columns a database
    written before them lacks get the values its migration would give."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no results database at {path}")
    try:
        _refuse_unless_ours(path)
        db = _read_only(path)
        try:
            present = [row[1] for row in db.execute("PRAGMA table_info(runs)")]
            if not present:
                return []
            have = [c for c in COLUMNS if c in present]
            cur = db.execute(f"SELECT {', '.join(have)} FROM runs {_ORDER}")
            rows = []
            for values in cur:
                row = dict(zip(have, values))
                protocol = row["protocol"] if isinstance(row["protocol"], int) else 2
                row.update({c: _added_value(c, protocol) for c in COLUMNS if c not in row})
                rows.append(_parsed(path, {c: row[c] for c in COLUMNS}))
            return rows
        finally:
            db.close()
    except (sqlite3.DatabaseError, OSError, ValueError) as err:
        raise StoreError(f"{path}: cannot be read as a results database ({err})") from None


class ResultStore:
    """A results database at ``path`` (created if missing)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"no results database at {self.path}")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            _refuse_unless_ours(self.path)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except (sqlite3.DatabaseError, OSError, ValueError) as err:
            raise StoreError(f"{self.path}: cannot be used as a results database ({err})") from None
        try:
            self._open()
        except (sqlite3.DatabaseError, OSError, ValueError) as err:
            self._db.close()
            raise StoreError(f"{self.path}: cannot be used as a results database ({err})") from None
        except StoreError:
            self._db.close()
            raise

    def _open(self) -> None:
        # Switching a fresh file to WAL takes an exclusive lock that SQLite does not wait for when
        # another process is switching it too (no busy handler for that escalation): retry.
        deadline = time.monotonic() + 60
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")  # one writer creates or migrates; the others then see it done
        try:
            tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
            fresh = not tables
            self._db.execute(_SCHEMA)
            if fresh:
                self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
            for name, declaration in _ADDED.items():
                if name not in columns:  # databases written before the column existed
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {declaration}")
                    if name == "validation":  # protocol 1 had no validation split
                        self._db.execute("UPDATE runs SET validation = 0 WHERE protocol < 2")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def finished_keys(self) -> set[str]:
        return {k for (k,) in self._db.execute("SELECT key FROM runs")}

    def claim(self, keys: list[str], by: str) -> list[str]:
        """Of ``keys``, those now claimed by ``by``: not finished, and unclaimed or claimed by a
        process that has died (in one transaction: two sweeps never get the same key)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(_CLAIMS)  # made by the first sweep: reading a database writes nothing
            done = self.finished_keys()
            held = self._claims()
            mine = [k for k in keys
                    if k not in done and (k not in held or held[k] == by or not _alive(held[k]))]
            self._db.executemany("INSERT OR REPLACE INTO claims (key, owner, claimed_at) VALUES (?, ?, ?)",
                                 [(k, by, time.time()) for k in mine])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return mine

    def _has_claims(self) -> bool:
        found = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'claims'").fetchone()[0]
        return bool(found)

    def _claims(self) -> dict[str, str]:
        """Every claim, key -> owner (none before the first sweep made the table)."""
        if not self._has_claims():
            return {}
        return dict(self._db.execute("SELECT key, owner FROM claims").fetchall())

    def release(self, by: str) -> None:
        """Drop the claims of ``by`` (its sweep is over)."""
        if self._has_claims():
            self._db.execute("DELETE FROM claims WHERE owner = ?", (by,))

    def claimed_elsewhere(self, keys: list[str], by: str) -> dict[str, str]:
        """Unfinished ``keys`` claimed by another live process: key -> its owner."""
        done = self.finished_keys()
        held = self._claims()
        return {k: held[k] for k in keys if k in held and k not in done and held[k] != by and _alive(held[k])}

    def add(self, result: dict) -> bool:
        """Insert one finished run; False if its key is already there (never a duplicate). A run
        with a non-finite number is refused with a ValueError, never dropped in silence."""
        row = {**_OPTIONAL, **result, "finished_at": time.time()}
        bad = [c for c in _NUMBERS if not math.isfinite(row[c])]
        if bad:
            raise ValueError(f"run {row['key']}: non-finite {', '.join(bad)}; record diverged runs as such")
        if row["status"] not in STATUSES:
            raise ValueError(f"run {row['key']}: status must be one of {STATUSES}, got {row['status']!r}")
        values = [json.dumps(row[c]) if c in _JSON else row[c] for c in COLUMNS]
        cur = self._db.execute(
            f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
            "ON CONFLICT(key) DO NOTHING",
            values,
        )
        return cur.rowcount == 1

    def rows(self) -> list[dict]:
        cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM runs {_ORDER}")
        return [_parsed(self.path, dict(zip(COLUMNS, values))) for values in cur]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
