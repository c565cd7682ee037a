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

``nanogpt`` is nanoGPT's CPU recipe for character-level Shakespeare (its README): the built-in
GPT (4 layers, 4 heads, 128 dims, context 64, no dropout) on ``shakespeare-char``, AdamW at lr 1e-3
(betas 0.9, 0.99, weight decay 0.1 on weights only), batch 12, 2000 iterations with 5% warm-up,
a cosine to lr / 10 and gradient clipping at 1, evaluated every 250; 3 seeds; the LLM-era
activations against the CNN-era adaptive ones, GELU the baseline; the measure is the test loss
(nats per character) at the evaluation with the lowest validation loss. It is the protocol of
the text data sets when none is named.

``transfer`` and ``convert`` fine-tune: networks trained on a ``source`` data set start the runs on
the target (``experiments/finetune.py``: the weights kept, the classifier head fresh).
``transfer`` is the AReLU repository's transfer experiment (``transfer_learning.sh``: ConvMNIST
pretrained on MNIST with SGD at lr 1e-2 for 20 epochs, every activation with itself, then
fine-tuned on SVHN with SGD at lr 1e-5): SVHN cannot be had offline, so the pair here is MNIST-1D
-> shifted MNIST-1D (``datasets.builtin.SHIFTED_MNIST1D``: the digits' templates reversed in time,
twice the noise, wider scales, 1600 training samples): the same shapes and classes, another
distribution, and small enough for 3 seeds of every activation. MNIST-1D needs more steps than
MNIST (ConvMNIST1D reaches about 70% after 20 epochs at lr 1e-2, still rising), so the
pretraining runs 50 epochs; the fine-tuning learning rates are 1e-3, 1e-4 and 1e-5, 20 epochs,
paired to ReLU by seed. ``convert`` is the practical
question: one ReLU network pretrained per seed, converted to each adaptive activation with
``init="match"`` and with the paper's initialisation, fine-tuned with SGD at lr 1e-3 for 20 epochs
and paired to keeping ReLU. ``--source fashion-mnist --dataset digits-28 --model conv`` is the image pair.
``convert-gpt`` asks the same of a transformer: one GELU GPT pretrained per seed by ``nanogpt``'s
recipe (AdamW at lr 1e-3, 2000 iterations) on ``shakespeare-no-comedies`` (the 30 plays that are
not comedies), converted to each adaptive activation with both inits and fine-tuned on
``shakespeare-comedies`` (plays it has never read) with AdamW at lr 3e-4 for 500 iterations
(about half an epoch of the comedies' training split), evaluated every 100, paired to keeping GELU;
the language model keeps its head (the corpora share their characters).

Options given explicitly override the protocol's (``resolve``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from ..errors import UserError

__all__ = ["ARELU_ACTIVATIONS", "CONVERT_ACTIVATIONS", "CONVERT_LM_ACTIVATIONS", "DEFAULT_ACTIVATIONS",
           "INITS", "LM_ACTIVATIONS", "PROTOCOLS", "Protocol", "TRANSFER_ACTIVATIONS", "for_data",
           "protocol_names", "resolve"]

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

# The transformer comparison: the baseline, the activations language models adopted, the CNN-era
# adaptive ones (those that pool over positions see positions <= t: the model is causal), ACON-C as
# a GLU gate.
LM_ACTIVATIONS = ("gelu", "swiglu", "relu2", "xielu", "polynorm", "golu", "arelu", "acon_c", "meta_acon_c",
                  "aprelu", "dy_relu_b", "acon_c_glu", "swiglu_oss")

# Fine-tuning: the AReLU paper's set and the adaptive ones; the conversions ``init="match"`` fits
# (FReLU, which needs 2-D maps, is left out of the 1-D pair)
TRANSFER_ACTIVATIONS = ARELU_ACTIVATIONS + ("acon_c", "meta_acon_c", "aprelu", "dy_relu_b")
CONVERT_ACTIVATIONS = ("relu", "acon_c", "meta_acon_c", "aprelu", "arelu", "dy_relu_b", "prelu", "swish")
# a GELU transformer converted: the adaptive families ``init="match"`` fits (in the GPT, the pooling
# ones causal)
CONVERT_LM_ACTIVATIONS = ("gelu", "acon_c", "meta_acon_c", "aprelu", "arelu", "dy_relu_b")
INITS = ("paper", "match")  # how ``convert`` puts a new activation into a pretrained network


@dataclass(frozen=True)
class Protocol:
    """The settings of a comparison. ``model`` None: the built-in network for the data.
    ``scale``: "standard" (built-in data standardised with the training set's mean and std) or
    "unit" (built-in images in [0, 1], as torchvision's ToTensor); data given by the user are
    used as given. ``loss``: "cross_entropy" or "nll" (log-softmax then NLL, the AReLU code's
    LogSoftmax head; the same maths). ``validation``: the share of the training set held out to
    pick the epoch; 0 trains on all of it and picks the epoch on the test set (the papers' way).
    ``iters``: train by iterations (0: by ``epochs``), evaluating every ``eval_every``; ``baseline``:
    the activation the report compares the others with. Fine-tuning: ``source``, the data set the
    networks are pretrained on (None: trained from scratch) with ``pretrain_optimizer``,
    ``pretrain_lr`` and ``pretrain_epochs``, or ``pretrain_iters`` iterations where it is not 0
    (a language model's way; evaluated every tenth); ``base`` None pretrains each activation with
    itself, an activation's name pretrains that one and converts it to each activation with each
    of ``inits``."""

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
    iters: int = 0
    eval_every: int = 0
    baseline: str | None = None  # None: relu where it ran, else gelu (``report.write_report``)
    source: str | None = None
    base: str | None = None
    inits: tuple[str, ...] = ("paper",)
    pretrain_optimizer: str = "sgd"
    pretrain_lr: float = 1e-2
    pretrain_epochs: int = 20
    pretrain_iters: int = 0


PROTOCOLS = {
    "default": Protocol("default", "mnist1d", None, DEFAULT_ACTIVATIONS, ("sgd",), (1e-2,), 3, 5, 128),
    "arelu": Protocol("arelu", "mnist", None, ARELU_ACTIVATIONS, ("sgd", "adam"), (1e-2, 1e-3, 1e-4, 1e-5),
                      5, 20, 128, scale="unit", loss="nll", validation=0.0),
    "nanogpt": Protocol("nanogpt", "shakespeare-char", "gpt-char", LM_ACTIVATIONS, ("adamw",), (1e-3,), 3, 1,
                        12, iters=2000, eval_every=250, baseline="gelu"),
    "transfer": Protocol("transfer", "mnist1d-shifted", "conv1d", TRANSFER_ACTIVATIONS, ("sgd",),
                         (1e-3, 1e-4, 1e-5), 3, 20, 128, source="mnist1d", pretrain_epochs=50),
    "convert": Protocol("convert", "mnist1d-shifted", "conv1d", CONVERT_ACTIVATIONS, ("sgd",), (1e-3,), 3, 20,
                        128, source="mnist1d", base="relu", inits=INITS, baseline="relu", pretrain_epochs=50),
    "convert-gpt": Protocol("convert-gpt", "shakespeare-comedies", "gpt-char", CONVERT_LM_ACTIVATIONS,
                            ("adamw",), (3e-4,), 3, 1, 12, iters=500, eval_every=100,
                            source="shakespeare-no-comedies", base="gelu", inits=INITS, baseline="gelu",
                            pretrain_optimizer="adamw", pretrain_lr=1e-3, pretrain_iters=2000),
}
SETTINGS = tuple(f for f in Protocol.__dataclass_fields__ if f != "name")


def for_data(data: object) -> str:
    """The protocol a comparison on ``data`` takes when none is named: "nanogpt" for text, else
    "default"."""
    from ..datasets.builtin import is_language_data

    return "nanogpt" if is_language_data(data) else "default"


def resolve(protocol: str | None = None, **given) -> dict:
    """The settings of ``protocol`` (None: ``for_data`` of the data given, else "default") with
    every setting in ``given`` that is not None put over them. UserError for an unknown protocol
    or setting."""
    name = protocol or for_data(given.get("dataset"))
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    unknown = set(given) - set(SETTINGS)
    if unknown:
        raise UserError(f"unknown setting {sorted(unknown)[0]!r}; settings are {', '.join(SETTINGS)}")
    settings = asdict(PROTOCOLS[name])
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings


def protocol_names(rows: Sequence[Mapping]) -> list[str]:
    """The named protocol each stored row's run followed, told by the choices that set the
    protocols apart (input scale, loss, a validation split or not, training by iterations,
    pretraining on a source, converting from one base activation: decided per data set and
    source, since a conversion's baseline converts nothing); "custom" where none fits."""
    converted = {(r["dataset"], r.get("source", "")) for r in rows if r.get("init")}
    names = []
    for r in rows:
        source = r.get("source", "")
        traits = (r.get("scale") or "standard", r.get("loss") or "cross_entropy",
                  (r.get("validation") or 0) > 0, bool(r.get("iters")), bool(source),
                  (r["dataset"], source) in converted)
        names.append(next((p.name for p in PROTOCOLS.values()
                           if traits == (p.scale, p.loss, p.validation > 0, bool(p.iters), bool(p.source),
                                         bool(p.base))), "custom"))
    return names
