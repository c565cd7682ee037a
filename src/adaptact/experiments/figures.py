"""The figures of ``adaptact plot`` and ``adaptact inspect``: activation curves, and what the
adaptive activations of trained comparison checkpoints do on a data set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..analysis import inspect as ins
from ..analysis.plots import plot_acon_family, plot_curves
from ..errors import UserError
from ..registry import spec
from ..datasets import builtin
from .checkpoints import load_checkpoint
from ..files import writable_dir, writable_file

__all__ = ["inspect_checkpoints", "plot_activations"]


def _check_format(output: str | Path) -> None:
    """UserError unless matplotlib can write ``output``'s format (named by its suffix; none: PNG)."""
    suffix = Path(output).suffix.lstrip(".").lower()
    if not suffix:
        return
    from ..analysis.plots import pyplot

    formats = pyplot().figure().canvas.get_supported_filetypes()
    pyplot().close("all")
    if suffix not in formats:
        raise UserError(f"output {str(output)!r}: matplotlib cannot write .{suffix} files; use .png, .pdf "
                        "or .svg")


def plot_activations(names: Sequence[str], output: str | Path, derivative: bool = False,
                     checkpoint: str | Path | None = None) -> Path:
    """Curves (and derivatives) of the named activations and of the learned ones in ``checkpoint``
    to the PNG ``output``; ``acon_c`` alone draws its family of curves."""
    try:
        items: list = [spec(n).name for n in names]
        flat = next((n for n in items if not spec(n).elementwise), None)
    except ValueError as err:
        raise UserError(str(err)) from None
    if flat:
        raise UserError(f"{flat!r} is no elementwise function of its input (it normalises over or splits the "
                        "channels): it has no curve to plot")
    writable_file(output, "output")
    _check_format(output)
    if checkpoint is not None:
        items += ins.learned_activations(load_checkpoint(checkpoint)[0])
    if not items:
        raise UserError("name at least one activation or give a checkpoint")
    if items == ["acon_c"]:
        return plot_acon_family(output)
    return plot_curves(items, output, derivative=derivative)


def inspect_checkpoints(checkpoints: Sequence[str | Path], dataset: str, data_dir: str | None = None,
                        samples: int = 4, out: str | Path = "inspect") -> list[Path]:
    """PNGs of what the adaptive activations of trained checkpoints do on ``dataset``'s test split:
    Meta-ACON-C's beta (against an ACON-C checkpoint's fixed beta when one is given), APReLU's
    alpha, DY-ReLU's pieces, FReLU's share of elements where its condition wins, AReLU's feature
    maps. Returns the files written."""
    models = [load_checkpoint(c)[0] for c in checkpoints]
    ds = builtin.load(dataset, data_dir)
    if not isinstance(ds, builtin.Dataset):
        raise UserError(f"inspect shows activations on images or signals; {dataset} is text")
    folder = writable_dir(out, "output folder")
    reference = next((b for b in map(ins.acon_reference_beta, models) if b is not None), None)
    written = []
    for k, model in enumerate(models):
        try:
            got = ins.collect(model, ds.test_x, keep_maps=samples)
        except (RuntimeError, ValueError) as err:
            raise UserError(f"{checkpoints[k]} does not fit {dataset}: {str(err).splitlines()[0]}") from None
        tag = f"m{k}-" if len(models) > 1 else ""
        for layer, beta in list(got.meta_acon_beta.items())[:1]:
            written.append(ins.plot_meta_acon_beta(beta, folder / f"{tag}meta_acon_beta.png", samples,
                                                   reference, layer))
        for layer, alpha in list(got.aprelu_alpha.items())[:1]:
            written.append(ins.plot_aprelu_alpha(alpha, folder / f"{tag}aprelu_alpha.png", layer=layer))
        for layer, (a, b) in list(got.dy_relu_pieces.items())[:1]:
            written.append(ins.plot_dy_relu_pieces(a, b, folder / f"{tag}dy_relu_pieces.png", samples, layer))
        for layer, share in list(got.frelu_share.items())[:1]:
            written.append(ins.plot_frelu_share(share, folder / f"{tag}frelu_share.png", layer))
        inputs = got.inputs
        for layer, (pre, post) in list(got.arelu_maps.items())[:1]:
            if inputs is not None:
                written.append(ins.plot_arelu_maps(inputs, pre, post, folder / f"{tag}arelu_maps.png",
                                                   samples, layer=layer))
    if not written:
        raise UserError("no Meta-ACON-C, APReLU, DY-ReLU, FReLU or AReLU layer in the given checkpoints")
    return written
