"""Workers die with `adaptact compare`: SIGTERM or SIGKILL of the parent leaves no process behind."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _descendants(pid: int) -> set[int]:
    todo, seen = [pid], set()
    while todo:
        for child in _children(todo.pop()) - seen:
            seen.add(child)
            todo.append(child)
    return seen


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_process_outlives_compare(tmp_path, sig):
    command = [sys.executable, "-m", "adaptact", "compare", "--dataset", "digits", "--activations",
               "relu,swish,acon_c,arelu", "--seeds", "20", "--epochs", "50", "--workers", "2",
               "--no-progress",
               "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _descendants(proc.pid)
        if len(workers) >= 3:  # the two workers and multiprocessing's resource tracker
            break
        time.sleep(0.2)
    assert proc.poll() is None and len(workers) >= 3, (workers, proc.stderr.read().decode()[-2000:])
    time.sleep(1.0)  # the workers are training
    workers = _descendants(proc.pid)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still alive 10 s after {sig.name}: {left}"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert "Traceback" not in proc.stderr.read().decode()
