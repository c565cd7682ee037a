"""Output files: two writers of one path never share a temporary file; staged files appear
together or not at all."""

from pathlib import Path

import pytest
import torch

from adaptact.experiments.checkpoints import load_checkpoint, save_checkpoint
from adaptact.files import StagedFiles, atomic_write


def test_two_writers_of_one_path_never_share_a_temporary(tmp_path):
    """The second writer starts while the first is half-way (as two processes saving one
    checkpoint do): with one `<name>.tmp` for both, the first would rename a file the second
    had replaced, or find its own gone."""
    path = tmp_path / "c.txt"
    temporaries = []

    def first(tmp: Path) -> None:
        temporaries.append(tmp)
        tmp.write_text("first, part 1 ")
        atomic_write(path, lambda t: (temporaries.append(t), t.write_text("second")))
        with open(tmp, "a") as f:
            f.write("part 2")

    atomic_write(path, first)
    assert temporaries[0] != temporaries[1]
    assert path.read_text() == "first, part 1 part 2" and not list(tmp_path.glob(".*.tmp"))


def test_checkpoints_are_written_whole(tmp_path):
    from adaptact.models.catalogue import LinearMNIST

    model = LinearMNIST("relu", 64, 10)
    path = save_checkpoint(tmp_path / "m.pt", model, {"model": "linear", "activation": "relu"}, (1, 8, 8), 10)
    loaded, _ = load_checkpoint(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not list(tmp_path.glob(".*.tmp"))


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError), StagedFiles() as stage:
        stage.add(tmp_path / "a.txt", lambda p: p.write_text("new a"))
        stage.add(tmp_path / "b.txt", lambda p: (_ for _ in ()).throw(RuntimeError("rendering failed")))
        stage.commit()
    assert (tmp_path / "a.txt").read_text() == "old a" and not (tmp_path / "b.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporaries left
    with StagedFiles() as stage:
        stage.add(tmp_path / "a.txt", lambda p: p.write_text("new a"))
        stage.add(tmp_path / "b.txt", lambda p: p.write_text("new b"))
        stage.commit()
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"


def test_a_full_disk_names_the_file_being_written(tmp_path):
    """A writer that fails without a file name (torch.save on a full disk) is reported with the path."""
    import errno

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write(tmp_path / "report.md", full)
    assert caught.value.filename == str(tmp_path / "report.md")
    assert list(tmp_path.iterdir()) == []  # no temporary left behind
