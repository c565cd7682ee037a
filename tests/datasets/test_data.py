"""Offline data: IDX folders (raw or gz), search order, generated MNIST-1D, digits, clear errors."""

import gzip

import numpy as np
import pytest

from adaptact.datasets import builtin as D


def write_idx(folder, n_train=12, n_test=6, size=28, gz=False, rng=None):
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in D.IDX_FILES.items():
        a = arrays[key]
        raw = bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes()
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.fixture(autouse=True)
def isolated(no_system_data):
    yield


@pytest.mark.parametrize("gz", [False, True])
def test_reads_idx_folder_raw_or_gz(tmp_path, gz):
    arrays = write_idx(tmp_path / "d", gz=gz)
    ds = D.load("mnist", str(tmp_path / "d"))
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_x.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train_y"])
    # standardised with the training set's statistics, order preserved
    raw = arrays["train_x"].astype(np.float32)
    np.testing.assert_allclose(ds.train_x[:, 0].numpy(), (raw - raw.mean()) / raw.std(ddof=1), rtol=1e-4,
                               atol=1e-4)


def test_search_order(tmp_path, monkeypatch):
    write_idx(tmp_path / "system" / "fashion-mnist", n_train=5)
    assert D.find_idx_dir("fashion-mnist") == tmp_path / "system" / "fashion-mnist"
    write_idx(tmp_path / "env" / "fashion-mnist", n_train=7)
    monkeypatch.setenv("ADAPTACT_DATA", str(tmp_path / "env"))
    assert D.find_idx_dir("fashion-mnist") == tmp_path / "env" / "fashion-mnist"
    write_idx(tmp_path / "arg", n_train=9)
    assert D.find_idx_dir("fashion-mnist", tmp_path / "arg") == tmp_path / "arg"
    assert len(D.load("fashion-mnist", str(tmp_path / "arg")).train_y) == 9


def test_missing_data_says_how_to_get_it(tmp_path):
    expected = r"fashion-mnist: no folder with its four IDX files .*apt-get install dataset-fashion-mnist"
    with pytest.raises(D.DataNotFound, match=expected):
        D.load("fashion-mnist")


def test_truncated_idx_names_the_file(tmp_path):
    write_idx(tmp_path / "d")
    bad = tmp_path / "d" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(D.CorruptData, match=f"{bad}: truncated or corrupt IDX data"):
        D.load("mnist", str(tmp_path / "d"))


def test_corrupt_gzip_and_bad_magic_name_the_file(tmp_path):
    write_idx(tmp_path / "g", gz=True)
    bad = tmp_path / "g" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(D.CorruptData, match=f"{bad}: cannot be read as gzip"):
        D.load("mnist", str(tmp_path / "g"))
    write_idx(tmp_path / "m")
    bad = tmp_path / "m" / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    with pytest.raises(D.CorruptData, match=f"{bad}: not an IDX file"):
        D.load("mnist", str(tmp_path / "m"))


def test_mismatched_labels_are_reported(tmp_path):
    write_idx(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2]))
    with pytest.raises(D.CorruptData, match=r"test images \(6, 28, 28\) and labels \(2,\) do not match"):
        D.load("mnist", str(tmp_path / "d"))


def test_mnist1d_is_generated_locally_and_deterministic():
    pytest.importorskip("mnist1d")
    ds = D.load("mnist1d")
    assert ds.train_x.shape == (4000, 1, 40) and ds.test_x.shape == (1000, 1, 40)
    assert abs(float(ds.train_x.mean())) < 1e-4 and abs(float(ds.train_x.std()) - 1) < 1e-3
    assert set(ds.train_y.tolist()) == set(range(10))
    D.load.cache_clear()
    assert (D.load("mnist1d").train_x == ds.train_x).all()


def test_digits():
    pytest.importorskip("sklearn")
    ds = D.load("digits")
    assert ds.train_x.shape[1:] == (1, 8, 8) and len(ds.train_y) + len(ds.test_y) == 1797


def test_the_transfer_targets_share_their_sources_shapes_but_not_their_distributions():
    """mnist1d-shifted: MNIST-1D's shapes and classes from reversed templates, more noise, fewer
    samples; digits-28: digits bilinearly at 28x28 (the same images, the full scale kept)."""
    pytest.importorskip("mnist1d")
    pytest.importorskip("sklearn")
    source, target = D.load("mnist1d"), D.load("mnist1d-shifted")
    assert target.train_x.shape[1:] == source.train_x.shape[1:] and len(target.train_y) == 1600
    assert set(target.train_y.tolist()) == set(range(10))
    # twice the noise: rougher signals at the same (standardised) scale
    def roughness(x):
        return float(x.diff(dim=-1).abs().mean())

    assert roughness(target.train_x) > 1.1 * roughness(source.train_x)
    small, large = D.load("digits", scale="unit"), D.load("digits-28", scale="unit")
    assert large.train_x.shape[1:] == (1, 28, 28) and (large.train_y == small.train_y).all()
    assert float(large.train_x.min()) == 0.0 and float(large.train_x.max()) <= 1.0
    # bilinear resizing keeps each image's mean brightness to within a few percent
    brightness = [x.train_x.mean((1, 2, 3)).numpy() for x in (large, small)]
    assert np.allclose(*brightness, atol=0.05)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        D.load("cifar")


def _draws():
    import random

    import torch

    return random.random(), float(np.random.rand()), float(torch.rand(()))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "mnist1d", "digits", "bearing-snr5",
                                  "mnist1d-shifted"])
def test_loading_leaves_every_global_rng_as_it_was(tmp_path, name):
    """mnist1d's generator seeds ``random`` and numpy: a user's seeded stream must not change
    (nor torch's) whichever built-in set is loaded, cached or not."""
    import random

    import torch

    if name in D.IDX_DATASETS:
        write_idx(tmp_path / name)
    for seed in (0, 1):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        expected = _draws()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        D.load(name, str(tmp_path / name) if name in D.IDX_DATASETS else None)
        assert _draws() == expected


def test_a_user_loader_that_seeds_leaves_the_callers_rng(tmp_path):
    import random

    import torch

    from adaptact.experiments.sources import data_source

    def loader():
        random.seed(42)
        np.random.seed(42)
        torch.manual_seed(42)
        g = torch.Generator().manual_seed(0)
        return (torch.randn(20, 1, 8, generator=g), torch.arange(20) % 2,
                torch.randn(6, 1, 8, generator=g), torch.arange(6) % 2)

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    expected = _draws()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    data_source(loader)
    assert _draws() == expected
