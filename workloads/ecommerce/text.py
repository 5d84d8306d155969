"""Tokenizer and vocabulary built from the corpus itself (nothing is downloaded).

Words seen fewer than ``min_count`` times map to a *shape class* such as ``<X-d>`` (``NK-4821``)
instead of one shared ``<unk>``, the word-signature trick of unknown-word handling in parsers and
taggers (Petrov et al. 2006; Collobert et al. 2011 use the related caps feature): model codes and
order numbers are almost always unseen, but their shape still tells the tagger what they are.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

# words keep inner hyphens/apostrophes/dots ("t-shirt", "men's", "1.5"); other punctuation splits
# entity markers of relation sentences ("[E1] ... [/E1]") stay single tokens
_TOKEN = re.compile(r"\[/?E[12]\]|[A-Za-z0-9]+(?:[-'.][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")
PAD, UNK = "<pad>", "<unk>"


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def shape(word: str) -> str:
    """``NK-4821`` -> ``<X-d>``, ``Norvik`` -> ``<Xx>``: character classes, repeats collapsed."""
    classes = []
    for ch in word:
        c = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
        if not classes or classes[-1] != c:
            classes.append(c)
    return "<" + "".join(classes)[:6] + ">"


class Vocab:
    """Word -> id. Id 0 is padding; rare words share the id of their shape class."""

    def __init__(self, sentences: Iterable[list[str]], min_count: int = 2, lowercase: bool = True):
        self.lowercase = lowercase
        words_seen = [w for s in sentences for w in s]
        counts = Counter(self._norm(w) for w in words_seen)
        words = sorted(w for w, c in counts.items() if c >= min_count)
        # every shape of the corpus gets an id: unseen words at test time fall back to them
        shapes = sorted({shape(w) for w in words_seen})
        self.itos = [PAD, UNK, *shapes, *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def _norm(self, word: str) -> str:
        return word.lower() if self.lowercase else word

    def __len__(self) -> int:
        return len(self.itos)

    def id(self, word: str) -> int:
        found = self.stoi.get(self._norm(word))
        if found is not None:
            return found
        return self.stoi.get(shape(word), 1)

    def encode(self, sentences: list[list[str]], max_len: int) -> np.ndarray:
        """Ids padded/truncated to ``max_len`` (int64 [n, max_len]); fixed length so the driver can
        concatenate clients' splits."""
        out = np.zeros((len(sentences), max_len), dtype=np.int64)
        for i, sentence in enumerate(sentences):
            ids = [self.id(w) for w in sentence[:max_len]]
            out[i, : len(ids)] = ids
        return out
