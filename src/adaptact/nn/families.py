"""torch.nn's layer families by their public classes, for isinstance checks that do not lean on
torch's private base classes (``_ConvNd``, ``_BatchNorm``, ``_NormBase``)."""

from __future__ import annotations

from torch import nn

__all__ = ["BATCH_NORMS", "CHANNEL_NORMS", "CONVOLUTIONS", "INSTANCE_NORMS", "BatchNorm"]

# the Lazy variants subclass these
CONVOLUTIONS = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

BATCH_NORMS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)

INSTANCE_NORMS = (
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d, nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d)

CHANNEL_NORMS = BATCH_NORMS + INSTANCE_NORMS  # num_features channels on dim 1, running statistics

BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d | nn.SyncBatchNorm  # for annotations
