import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def record_triton_launches():
    """Under TRITON_INTERPRET=1 with ADAPTACT_TRITON_LAUNCHES set (make test), write every distinct
    Triton launch of the session to that file, for test_triton_compile to compile for real GPUs."""
    path = os.environ.get("ADAPTACT_TRITON_LAUNCHES")
    if not path or os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from tests.ops import triton_launches as TL

    with TL.record_launches(run=True) as records:
        yield
    keys = sorted({TL.key(r) for r in records})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{json.dumps(json.loads(k))}\n" for k in keys))
