"""The results store under what a reliability engineer tries: many processes opening one fresh
database at once, two sweeps on one database, a damaged page, another program's SQLite file, and a
result the database cannot take."""

import hashlib
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from adaptact.cli import main
from adaptact.experiments import store as store_module
from adaptact.experiments.store import APPLICATION_ID, ResultStore, StoreError, owner, read_runs

from .test_report import _row


def _open_and_add(path, key, barrier):
    barrier.wait()
    with ResultStore(path) as store:
        store.add(_row(key))


def test_processes_opening_one_fresh_database_at_once_all_succeed(tmp_path):
    """Creating and migrating the schema is one transaction (it once ran twice: 'duplicate column')."""
    ctx = multiprocessing.get_context("fork")  # the children need sqlite only: no fresh imports
    for attempt in range(10):
        path = tmp_path / f"fresh{attempt}.sqlite"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_and_add, args=(path, f"k{i}", barrier)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 4
        with ResultStore(path) as store:
            assert len(store) == 4
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_another_programs_file_is_refused_with_no_byte_changed(tmp_path):
    users = tmp_path / "users.sqlite"
    with sqlite3.connect(users) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    db.close()
    other = tmp_path / "runs.sqlite"  # a table named runs that is not ours
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE runs (id INTEGER)")
    db.close()
    marked = tmp_path / "marked.sqlite"  # another program's application_id
    with sqlite3.connect(marked) as db:
        db.execute("PRAGMA application_id = 7")
        db.execute("CREATE TABLE claims (x)")
    db.close()
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database")
    for path, message in ((users, r"tables are not adaptact's \(users\); not touched"),
                          (other, r"table 'runs' is not adaptact's .*not touched"),
                          (marked, r"another program's SQLite file \(application_id 0x7\)"),
                          (text, "not an SQLite file, so no results database; not touched")):
        before = _digest(path)
        with pytest.raises(StoreError, match=message):
            ResultStore(path)
        assert _digest(path) == before, path
        assert sorted(p.name for p in tmp_path.glob(path.name + "*")) == [path.name]  # no -wal, no -shm


def test_a_damaged_database_is_refused_untouched(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        for i in range(200):
            store.add(_row(f"k{i}", error="x" * 200))
    with sqlite3.connect(path) as db:  # fold the WAL in, so the damage below is in the file itself
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[3 * page: 3 * page + 12] = b"\xff" * 12  # the header of one b-tree page overwritten
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(StoreError, match=r"damaged|malformed|cannot be used"):
        ResultStore(path)
    assert _digest(path) == before


def test_claims_keep_two_sweeps_from_training_one_run(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as a, ResultStore(path) as b:
        keys = ["k0", "k1", "k2"]
        assert a.claim(keys, owner()) == keys
        assert b.claim(keys, "other-host:1") == []  # a live claim is never taken
        assert b.claimed_elsewhere(keys, "other-host:1") == dict.fromkeys(keys, owner())
        a.add(_row("k0"))
        a.release(owner())
        assert b.claim(keys, "other-host:1") == ["k1", "k2"]  # released, and k0 is done
        dead = f"{owner().rpartition(':')[0]}:999999999"  # this host, a process that does not exist
        b.release("other-host:1")
        assert b.claim(["k1"], dead) == ["k1"]
        assert a.claim(["k1"], owner()) == ["k1"]  # a dead process's claim is taken over


def test_a_result_the_database_cannot_take_is_kept_beside_it(tmp_path, monkeypatch):
    from adaptact.experiments import sweep

    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        def broken(result):
            raise sqlite3.DatabaseError("database disk image is malformed")

        monkeypatch.setattr(store, "add", broken)
        with pytest.raises(StoreError, match=r"run k0 finished but could not be stored .* kept in "
                                             r".*unstored-k0"):
            sweep._store(store, _row("k0"))
    kept = tmp_path / "r.sqlite.unstored-k0.json"
    assert '"best_acc": 0.5' in kept.read_text()


def _sweep(path, barrier, queue):
    from adaptact.experiments import sweep

    trained = []
    train = sweep.run
    sweep.run = lambda config: trained.append(config.key) or train(config)  # one worker: in this process
    configs = sweep.expand("digits", "linear", ["relu", "swish", "acon_c"], ["sgd"], [1e-2], seeds=2,
                           epochs=1)
    barrier.wait()
    with ResultStore(path) as store:
        stored = sweep.run_sweep(configs, store, progress=False).ran
    queue.put((stored, len(trained)))


def test_two_sweeps_on_one_fresh_database_share_the_runs(tmp_path):
    """Each run is trained once (claimed by one sweep), each sweep counts what it stored, and both
    end with every run in the database."""
    pytest.importorskip("sklearn")
    ctx = multiprocessing.get_context("fork")
    path, barrier, queue = tmp_path / "r.sqlite", ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_sweep, args=(path, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    stored, trained = zip(*(queue.get(timeout=5) for _ in procs))
    with ResultStore(path) as store:
        assert len(store) == 6 == sum(stored) == sum(trained)
        assert store.claimed_elsewhere([r["key"] for r in store.rows()], owner()) == {}


def test_reading_a_database_writes_nothing(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.add(_row("k0"))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    before = _digest(path)
    with ResultStore(path, create=False) as store:
        assert len(store.rows()) == 1 and store.claimed_elsewhere(["k0"], owner()) == {}
    assert _digest(path) == before


ROOT = Path(__file__).resolve().parents[2]


def _first_schema_database(path: Path) -> None:
    """A database as the first adaptact wrote it: the first schema (no later column), a protocol 1
    run (no validation split) and a protocol 2 one, in WAL mode."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(store_module._SCHEMA)
        for key, protocol in (("k1", 1), ("k2", 2)):
            db.execute("INSERT INTO runs VALUES (?, 'digits', 'linear', 'relu', 'all', 'sgd', 0.01, 0, 2, "
                       "128, ?, 0.5, 0.6, 1.5, '[1.0, 0.5]', '[0.5, 0.6]', '{}', 1.0)", (key, protocol))
    db.close()


def test_a_database_from_before_its_columns_reads_as_its_migration_without_a_byte_written(tmp_path):
    """``read_runs`` (what ``adaptact report`` reads) gives the rows the store gives after migrating
    a copy, and the database itself keeps every byte (the report once migrated every committed
    database it read)."""
    path, copy = tmp_path / "first.sqlite", tmp_path / "copy.sqlite"
    _first_schema_database(path)
    shutil.copy(path, copy)
    committed = tmp_path / "committed.sqlite"
    shutil.copy(ROOT / "benchmarks" / "arelu-protocol" / "fashion-mnist.sqlite", committed)
    for db in (path, committed):
        before = _digest(db)
        read = read_runs(db)
        assert main(["report", "--db", str(db), "--out", str(tmp_path / "report")]) == 0
        assert _digest(db) == before, db
        migrated = tmp_path / f"migrated-{db.name}"
        shutil.copy(db, migrated)
        with ResultStore(migrated) as store:
            assert read == store.rows()
    by = {r["key"]: r for r in read_runs(path)}
    assert by["k1"]["validation"] == 0.0 and by["k2"]["validation"] == 0.1  # protocol 1 had no split
    assert by["k1"]["iter_time"] == 0.0 and by["k1"]["backend"] == "" and by["k1"]["warnings"] == []


def _in_a_read_only_folder(folder: Path, code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh Python with ``folder`` read-only to it: its mode taken away for a
    user who is not root; for root, a read-only bind mount in a mount namespace of its own."""
    argv = [sys.executable, "-c", code]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=300)
        finally:
            folder.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("root without unshare: no read-only folder can be made")
    script = (f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" '
              f'&& touch "{folder}/probe" 2>/dev/null && exit 99; exec "$@"')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv], capture_output=True, text=True,
                          timeout=300)
    if done.returncode == 99 or "mount" in done.stderr and "permission denied" in done.stderr.lower():
        pytest.skip(f"no read-only bind mount here: {done.stderr.strip()[:200]}")
    return done


def test_a_database_in_a_folder_nothing_may_write_to_is_reported(tmp_path):
    """A committed database (WAL mode) on read-only media, or another user's: SQLite's read-only
    mode cannot make its WAL index there; the report reads it all the same. A write-ahead log with
    runs in it that cannot be read there is refused in one line, never left out."""
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(ROOT / "benchmarks" / "transfer" / "convert.sqlite", folder / "convert.sqlite")
    expected = len(read_runs(ROOT / "benchmarks" / "transfer" / "convert.sqlite"))
    out = tmp_path / "report"
    code = ("import sys; from adaptact.cli import main; from adaptact.experiments.store import read_runs; "
            f"print(len(read_runs({str(folder / 'convert.sqlite')!r}))); "
            f"sys.exit(main(['report', '--db', {str(folder / 'convert.sqlite')!r}, '--out', {str(out)!r}]))")
    done = _in_a_read_only_folder(folder, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == str(expected) and (out / "report.md").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["convert.sqlite"]

    logged = tmp_path / "logged"  # a writer killed before its checkpoint: its runs are in the -wal
    logged.mkdir()
    writer = ("import os, sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
              "db.execute('PRAGMA wal_autocheckpoint=0'); "
              "db.execute('DELETE FROM runs WHERE rowid = (SELECT MIN(rowid) FROM runs)'); os._exit(0)")
    shutil.copy(ROOT / "benchmarks" / "transfer" / "convert.sqlite", logged / "r.sqlite")
    subprocess.run([sys.executable, "-c", writer, str(logged / "r.sqlite")], check=True, timeout=60)
    (logged / "r.sqlite-shm").unlink()
    assert (logged / "r.sqlite-wal").stat().st_size > 0
    code = ("from adaptact.experiments.store import read_runs, StoreError\n"
            "try:\n"
            f"    print(len(read_runs({str(logged / 'r.sqlite')!r})))\n"
            "except StoreError as err:\n"
            "    print(err)")
    done = _in_a_read_only_folder(logged, code)
    assert done.returncode == 0, done.stderr
    assert "its write-ahead log (r.sqlite-wal) holds runs that cannot be read" in done.stdout, done.stdout
