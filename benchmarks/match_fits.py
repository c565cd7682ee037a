"""How closely each adaptive activation can take the place of a classic one (``init="match"``): the
fit error max |new - old| on [-3, 3] of ``adaptact.matching.match`` for each family and target,
channels last, and beside it how far the output of a small trained MLP moves when its activation is
converted with ``init="match"`` and with the paper's initialisation.

    python benchmarks/match_fits.py
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

import adaptact
from adaptact.matching import match

TARGETS = {"ReLU": nn.ReLU(), "LeakyReLU(0.1)": nn.LeakyReLU(0.1), "GELU": nn.GELU(),
           "GELU (tanh)": nn.GELU(approximate="tanh"), "SiLU": nn.SiLU(), "Mish": nn.Mish()}


def _options(name: str) -> dict:
    return {"dims": 1} if name == "frelu" else {}


def moved(name: str, base: nn.Module) -> tuple[float, float]:
    """Max output change of a token MLP trained 100 Adam steps with ``base``: (match, paper)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), copy.deepcopy(base), nn.Linear(32, 32), nn.Linear(32, 4))
    x, y = torch.randn(256, 5, 8), torch.randn(256, 5, 4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()
    paper = copy.deepcopy(net)
    with torch.no_grad():
        before = net(x)
        adaptact.replace_activations(net, name, init="match", **_options(name))
        adaptact.replace_activations(paper, name, **_options(name))
        return float((net(x) - before).abs().max()), float((paper(x) - before).abs().max())


def main() -> None:
    names = adaptact.available("adaptive")
    print("| activation | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for name in names:
        layout = {"channel_dim": -1, **_options(name)}
        errors = [match(adaptact.create(name, channels=8, **layout), t) for t in TARGETS.values()]
        print(f"| {name} | " + " | ".join(f"{e:.3f}" for e in errors) + " |")
    print()
    print("| activation | from ReLU: match / paper | from GELU: match / paper |")
    print("|---|---|---|")
    for name in names:
        cells = []
        for base in (nn.ReLU(), nn.GELU()):
            with_match, with_paper = moved(name, base)
            cells.append(f"{with_match:.4f} / {with_paper:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # the sites a family cannot match warn; the table says so
    main()
