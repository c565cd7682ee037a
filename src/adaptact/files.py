"""Files the workflows write: output paths checked before any work (UserError when they cannot
be written), and files replaced atomically (readers see the old file or the new one)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

__all__ = ["StagedFiles", "atomic_write", "remove_stale_temporaries", "writable_dir", "writable_file"]


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder this process can write in (created if missing)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".adaptact-probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except (OSError, ValueError) as err:  # ValueError: a NUL character in the path
        reason = getattr(err, "strerror", None) or err
        raise UserError(f"{what} {path}: cannot write there ({reason})") from None
    return path


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a file this process can create or replace (its folder created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder, not a file")
    writable_dir(path.parent if str(path.parent) else ".", what)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path}: cannot write there (permission denied)")
    return path


def _temporary(path: Path) -> Path:
    """A temporary name beside ``path`` that no other writer uses: .<name>.<pid>-<random>.tmp"""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporary files of writers that died in ``folder`` (their process is gone)."""
    for tmp in Path(folder).glob(".*.*-*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary name unique to this writer, then rename it to ``path``."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        write(tmp)
        tmp.replace(path)
    except OSError as err:
        if err.filename is None:  # a full disk inside a writer (torch.save, savefig): say where
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


class StagedFiles:
    """Files written under temporary names, then renamed into place one after the other by
    ``commit``, after every one of them is complete; ``discard`` (or leaving a ``with`` block
    without committing) removes them. A writer killed before ``commit`` leaves the old files
    untouched."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def add(self, path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
        path = Path(path)
        tmp = _temporary(path)
        self._staged.append((tmp, path))
        write(tmp)
        return path

    def commit(self) -> None:
        for tmp, path in self._staged:
            tmp.replace(path)
        self._staged.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()
