"""The activation comparison: data, models, training, sweeps, storage and reports."""
