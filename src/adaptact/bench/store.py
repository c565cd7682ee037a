"""SQLite results store: one row per finished run, keyed by the hash of its config.

Each run is written in its own transaction the moment it finishes, so a sweep killed at any
point (Ctrl-C, kill -9) loses only unfinished runs, and re-running skips finished ones.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Self

__all__ = ["COLUMNS", "ResultStore"]

COLUMNS = ("key", "dataset", "model", "activation", "policy", "optimizer", "lr", "seed", "epochs",
           "batch_size",
           "protocol", "first_epoch_acc", "best_acc", "wall_time", "train_loss", "test_acc", "versions",
           "finished_at")
_JSON = ("train_loss", "test_acc", "versions")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, dataset TEXT NOT NULL, model TEXT NOT NULL, activation TEXT NOT NULL,
    policy TEXT NOT NULL DEFAULT 'all', optimizer TEXT NOT NULL, lr REAL NOT NULL, seed INTEGER NOT NULL,
    epochs INTEGER NOT NULL,
    batch_size INTEGER NOT NULL, protocol INTEGER NOT NULL, first_epoch_acc REAL NOT NULL,
    best_acc REAL NOT NULL, wall_time REAL NOT NULL, train_loss TEXT NOT NULL, test_acc TEXT NOT NULL,
    versions TEXT NOT NULL, finished_at REAL NOT NULL
)
"""


class ResultStore:
    """A results database at ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "policy" not in columns:  # databases written before runs had a policy
            self._db.execute("ALTER TABLE runs ADD COLUMN policy TEXT NOT NULL DEFAULT 'all'")
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def finished_keys(self) -> set[str]:
        return {k for (k,) in self._db.execute("SELECT key FROM runs")}

    def add(self, result: dict) -> bool:
        """Insert one finished run; False if its key is already there (never a duplicate)."""
        row = {**result, "finished_at": time.time()}
        values = [json.dumps(row[c]) if c in _JSON else row[c] for c in COLUMNS]
        with self._db:
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                values,
            )
        return cur.rowcount == 1

    def rows(self) -> list[dict]:
        cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM runs ORDER BY dataset, model, activation, "
                               "optimizer, lr DESC, seed")
        out = []
        for values in cur:
            row = dict(zip(COLUMNS, values))
            for c in _JSON:
                row[c] = json.loads(row[c])
            out.append(row)
        return out

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
