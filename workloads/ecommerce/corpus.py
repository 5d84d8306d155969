"""A task's examples as token lists with labels, taken from the world or from a user's file.

A :class:`Corpus` is what partitioners and encoders see: tokens, one class label per example (the
intent, the relation — for NER the product's department, which Dirichlet partitions skew over),
the natural groups (platform, shop) when the world made the data, and BIO tags for NER.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.workloads.ecommerce import lexicon as lx
from fedray.workloads.ecommerce.text import tokenize
from fedray.workloads.ecommerce.world import TAGS, World


@dataclass
class Corpus:
    tokens: list[list[str]]
    labels: np.ndarray  # int64 class per example, indexing label_names
    label_names: list[str]
    groups: dict[str, np.ndarray] | None = None  # "platform" / "shop" ids (generated data only)
    tags: list[list[str]] | None = None  # BIO tags aligned with tokens (NER only)

    def __len__(self) -> int:
        return len(self.tokens)


def _groups(world: World, rows) -> dict[str, np.ndarray]:
    platform = np.array([p for p, *_ in rows], np.int64)
    shop = np.array([s for _, s, *_ in rows], np.int64)
    return {"platform": platform, "shop": platform * world.params.shops_per_platform + shop}


def _indexed(names: list[str], values: list[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[v] for v in values], np.int64)


def intent_corpus(world: World) -> Corpus:
    names = list(lx.INTENTS)
    rows = world.utterances
    return Corpus(
        tokens=[tokenize(text) for _, _, text, _ in rows],
        labels=_indexed(names, [intent for *_, intent in rows]),
        label_names=names,
        groups=_groups(world, rows),
    )


def relation_corpus(world: World) -> Corpus:
    names = list(lx.RELATIONS)
    rows = world.relation_sentences
    return Corpus(
        tokens=[tokenize(text) for _, _, text, _ in rows],
        labels=_indexed(names, [rel for *_, rel in rows]),
        label_names=names,
        groups=_groups(world, rows),
    )


def ner_tag_names(types=TAGS) -> list[str]:
    return ["O", *(f"{p}-{t}" for t in types for p in "BI")]


def ner_corpus(world: World) -> Corpus:
    departments = list(lx.CATEGORIES)
    return Corpus(
        tokens=[[w for w, _ in title] for title in world.titles],
        labels=_indexed(departments, [world.products[j].top for _, _, j in world.listings]),
        label_names=departments,
        groups=_groups(world, world.listings),
        tags=[[t for _, t in title] for title in world.titles],
    )


BOS, EOS = "<s>", "</s>"


def lm_corpus(world: World) -> Corpus:
    """Each listing's title, description and QA pairs as documents ``<s> … </s>``, grouped by the
    listing's platform and shop, labelled with the product's department."""
    departments = list(lx.CATEGORIES)
    docs, rows, labels = [], [], []
    qa_of: dict[int, list[str]] = {}
    for listing, question, answer in world.qa:
        qa_of.setdefault(listing, []).append(f"{question} {answer}")
    for i, (p, s, j) in enumerate(world.listings):
        title = " ".join(w for w, _ in world.titles[i])
        for text in (title, world.descriptions[i], *qa_of.get(i, [])):
            docs.append([BOS, *tokenize(text), EOS])
            rows.append((p, s))
            labels.append(world.products[j].top)
    return Corpus(
        tokens=docs,
        labels=_indexed(departments, labels),
        label_names=departments,
        groups=_groups(world, rows),
    )
