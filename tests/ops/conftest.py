import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def record_triton_launches():
    """Under TRITON_INTERPRET=1 with ADAPTACT_TRITON_LAUNCHES set (make test), write every distinct
    Triton launch of the session to that file, for test_triton_compile to compile for real GPUs
    (one file per pytest-xdist worker, the worker's name appended: ``recorded_launches`` reads
    them all)."""
    path = os.environ.get("ADAPTACT_TRITON_LAUNCHES")
    if not path or os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from tests.ops import triton_launches as TL

    with TL.record_launches(run=True) as records:
        yield
    keys = sorted({TL.key(r) for r in records})
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    target = Path(f"{path}.{worker}" if worker else path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{json.dumps(json.loads(k))}\n" for k in keys))


def recorded_launches(path: str) -> list[Path]:
    """The files the interpreter pass wrote for ``path``: itself, or one per xdist worker."""
    return sorted(p for p in Path(path).parent.glob(Path(path).name + "*")
                  if p.name == Path(path).name or p.name.startswith(Path(path).name + ".gw"))
