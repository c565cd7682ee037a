"""The data sets the comparison trains on, all offline: the IDX files of MNIST and Fashion-MNIST,
MNIST-1D from its generator, scikit-learn's digits (``builtin``), and simulated bearing vibration
signals (``bearing``). ``load(name)`` returns a ``Dataset`` of train and test tensors."""

from .builtin import DATASETS, Dataset, load, read_idx

__all__ = ["DATASETS", "Dataset", "load", "read_idx"]
