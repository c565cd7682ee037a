"""Named comparison protocols: every setting of a comparison in one switch.

``default`` is adaptact's own protocol: standardised inputs, cross-entropy, a seeded 10%
validation split that picks the epoch. ``arelu`` reruns the AReLU paper's experiment as its
official code (densechen/AReLU: ``main_mnist.py``, ``utils.py``, ``models/conv.py``) runs it:

* data: MNIST through ``transforms.ToTensor()`` only, pixels in [0, 1], no standardisation;
* network: ConvMNIST (``conv``, the built-in network for images) with a LogSoftmax head, trained on
  ``F.nll_loss``;
* batch 128, SGD(momentum 0.9) and Adam, learning rates 1e-2, 1e-3, 1e-4, 1e-5, 20 epochs,
  5 runs; no validation split: the paper's "best" is the best test accuracy over the epochs
  (a selection on the test set, reported as such);
* activations: its 13 non-learnable (CELU, ELU, GELU, LeakyReLU, Maxout, RReLU, ReLU, ReLU6, SELU,
  Sigmoid, Softplus, Swish, Tanh) and 5 learnable ones (APL, Mixture, PAU, PReLU, SLAF) built as
  its code builds them, ``activation()`` without arguments, which the registry names
  ``gelu_arelu``, ``maxout_pool``, ``swish_fixed`` and ``prelu_shared`` where they differ from
  adaptact's defaults; then AReLU.

Options given explicitly override the protocol's (``resolve``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UserError

__all__ = ["ARELU_ACTIVATIONS", "DEFAULT_ACTIVATIONS", "PROTOCOLS", "Protocol", "resolve"]

# The AReLU paper's comparison set, as its code builds each one: non-learnable, learnable, AReLU.
ARELU_ACTIVATIONS = ("celu", "elu", "gelu_arelu", "leaky_relu", "maxout_pool", "rrelu", "relu", "relu6",
                     "selu", "sigmoid", "softplus", "swish_fixed", "tanh",
                     "apl", "mixture", "pau", "prelu_shared", "slaf",
                     "arelu")
# adaptact's default set: the paper's kinds of activation in adaptact's variants (per-channel
# PReLU and Maxout, learnable Swish), then the library's adaptive ones (FReLU, which needs 2-D
# maps, is in the ResNet suite; the default data set is 1-D).
DEFAULT_ACTIVATIONS = ("apl", "arelu", "gelu", "maxout", "mixture", "slaf", "swish", "relu", "relu6",
                       "sigmoid", "leaky_relu", "elu", "prelu", "selu", "tanh", "rrelu", "celu", "softplus",
                       "pau", "acon_c", "meta_acon_c", "aprelu", "dy_relu_b")


@dataclass(frozen=True)
class Protocol:
    """The settings of a comparison. ``model`` None: the built-in network for the data.
    ``scale``: "standard" (built-in data standardised with the training set's mean and std) or
    "unit" (built-in images in [0, 1], as torchvision's ToTensor); data given by the user are
    used as given. ``loss``: "cross_entropy" or "nll" (log-softmax then NLL, the AReLU code's
    LogSoftmax head; the same maths). ``validation``: the share of the training set held out to
    pick the epoch; 0 trains on all of it and picks the epoch on the test set (the papers' way)."""

    name: str
    dataset: str
    model: str | None
    activations: tuple[str, ...]
    optimizers: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: int
    epochs: int
    batch_size: int
    scale: str = "standard"
    loss: str = "cross_entropy"
    validation: float = 0.1


PROTOCOLS = {
    "default": Protocol("default", "mnist1d", None, DEFAULT_ACTIVATIONS, ("sgd",), (1e-2,), 3, 5, 128),
    "arelu": Protocol("arelu", "mnist", None, ARELU_ACTIVATIONS, ("sgd", "adam"), (1e-2, 1e-3, 1e-4, 1e-5),
                      5, 20, 128, scale="unit", loss="nll", validation=0.0),
}
SETTINGS = tuple(f for f in Protocol.__dataclass_fields__ if f != "name")


def resolve(protocol: str | None = None, **given) -> dict:
    """The settings of ``protocol`` (None: "default") with every setting in ``given`` that is not
    None put over them. UserError for an unknown protocol or setting."""
    name = protocol or "default"
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    unknown = set(given) - set(SETTINGS)
    if unknown:
        raise UserError(f"unknown setting {sorted(unknown)[0]!r}; settings are {', '.join(SETTINGS)}")
    settings = asdict(PROTOCOLS[name])
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings
