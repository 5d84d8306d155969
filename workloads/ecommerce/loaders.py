"""Loaders for data users bring instead of the generated world (``workload.source: <path>``).

* CSV with a header ``text,label`` (intents, relations; RFC 4180 quoting for commas in texts).
  Relation sentences mark their entities ``[E1] ... [/E1]`` and ``[E2] ... [/E2]``.
* Plain UTF-8 text (LM): one document per line, blank lines skipped.
* CoNLL-style token/tag files (NER): one ``token tag`` per line (whitespace-separated, the tag
  last), a blank line between sentences, ``-DOCSTART-`` lines ignored; tags are ``O``, ``B-X`` or
  ``I-X``.
* Knowledge-graph triples (KG): TSV lines ``head<TAB>relation<TAB>tail`` with an optional 4th
  column ``client`` (which client holds the triple; a triple may be listed under several).

A malformed file raises :class:`fedray.errors.UserError` with one line naming the file, the line
and the problem, and saying how to fix it.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray.errors import UserError
from fedray.workloads.ecommerce.corpus import Corpus
from fedray.workloads.ecommerce.text import tokenize


def _open(path: Path):
    if not path.is_file():
        raise UserError(f"workload.source {str(path)!r} not found; give the path of your data file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not UTF-8 text (byte {err.start}); save the file as UTF-8"
        ) from None


def read_labelled_csv(path: str | Path, min_examples: int = 2) -> Corpus:
    """``text,label`` rows -> a corpus whose label names are the sorted distinct labels."""
    path = Path(path)
    lines = _open(path).splitlines()
    rows = list(csv.reader(lines))
    if not rows or [c.strip().lower() for c in rows[0]] != ["text", "label"]:
        raise UserError(
            f"{path}: line 1: expected the header 'text,label'; add it as the first line"
        )
    texts, labels = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise UserError(
                f"{path}: line {number}: expected 2 columns text,label, got {len(row)}; quote "
                'texts that contain commas ("a, b",label)'
            )
        text, label = row[0].strip(), row[1].strip()
        if not text or not label:
            raise UserError(
                f"{path}: line {number}: empty {'text' if not text else 'label'}; fill it or remove the line"
            )
        texts.append(tokenize(text))
        labels.append(label)
    if len(texts) < min_examples:
        raise UserError(
            f"{path}: only {len(texts)} examples; a federated split needs at least {min_examples}"
        )
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    return Corpus(
        tokens=texts, labels=np.array([index[v] for v in labels], np.int64), label_names=names
    )


def read_conll(path: str | Path, min_examples: int = 2) -> Corpus:
    """Token/tag lines -> a NER corpus. A sentence's class label (what Dirichlet partitions skew
    over) is its most frequent entity type, ``none`` without entities."""
    path = Path(path)
    sentences: list[list[str]] = []
    tag_seqs: list[list[str]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate([*_open(path).splitlines(), ""], start=1):
        fields = line.split()
        if not fields:
            if tokens:
                sentences.append(tokens)
                tag_seqs.append(tags)
                tokens, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise UserError(
                f"{path}: line {number}: expected 'token tag', got {line.strip()!r}; put the tag "
                "after the token, separated by whitespace"
            )
        tag = fields[-1]
        if not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
            raise UserError(
                f"{path}: line {number}: tag {tag!r} is not BIO; use O, B-TYPE or I-TYPE"
            )
        tokens.append(fields[0])
        tags.append(tag)
    if len(sentences) < min_examples:
        raise UserError(
            f"{path}: only {len(sentences)} sentences; a federated split needs at least {min_examples}"
        )
    kinds = [Counter(t[2:] for t in seq if t != "O").most_common(1) for seq in tag_seqs]
    strata = [k[0][0] if k else "none" for k in kinds]
    names = sorted(set(strata))
    index = {n: i for i, n in enumerate(names)}
    return Corpus(
        tokens=sentences,
        labels=np.array([index[s] for s in strata], np.int64),
        label_names=names,
        tags=tag_seqs,
    )


def read_text(path: str | Path, min_examples: int = 2) -> Corpus:
    """One document per non-blank line, wrapped in ``<s> … </s>`` (a single class: Dirichlet
    partitions then only skew quantities)."""
    from fedray.workloads.ecommerce.corpus import BOS, EOS

    path = Path(path)
    docs = [[BOS, *tokenize(line), EOS] for line in _open(path).splitlines() if line.strip()]
    if len(docs) < min_examples:
        raise UserError(
            f"{path}: only {len(docs)} non-blank lines; a federated split needs at least {min_examples}"
        )
    return Corpus(tokens=docs, labels=np.zeros(len(docs), np.int64), label_names=["text"])


# ----------------------------------------------------------------------------- triples


@dataclass(frozen=True)
class TripleFile:
    """Triples of a knowledge graph, and per triple the client that holds it (or None)."""

    triples: list[tuple[str, str, str]]
    clients: list[str] | None


def read_triples(path: str | Path, min_triples: int = 2) -> TripleFile:
    """``head<TAB>relation<TAB>tail`` lines (KG), optionally with a 4th ``client`` column.

    Blank lines and ``#`` comments are skipped, as is a first line ``head relation tail
    [client]`` (a header). Either every line names its client or none does."""
    path = Path(path)
    triples: list[tuple[str, str, str]] = []
    clients: list[str] = []
    width = None
    for number, line in enumerate(_open(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if not triples and [f.lower() for f in fields] in (
            ["head", "relation", "tail"],
            ["head", "relation", "tail", "client"],
        ):
            width = len(fields)
            continue
        if len(fields) not in (3, 4):
            raise UserError(
                f"{path}: line {number}: expected 3 tab-separated columns head, relation, tail "
                f"(and optionally client), got {len(fields)}; separate the columns with tabs"
            )
        if width is not None and len(fields) != width:
            raise UserError(
                f"{path}: line {number}: {len(fields)} columns, but earlier lines have {width}; "
                "give every line a client column or none"
            )
        width = len(fields)
        names = ("head", "relation", "tail", "client")[: len(fields)]
        empty = [n for n, f in zip(names, fields, strict=True) if not f]
        if empty:
            raise UserError(f"{path}: line {number}: empty {empty[0]}; fill it or remove the line")
        triples.append((fields[0], fields[1], fields[2]))
        if width == 4:
            clients.append(fields[3])
    if len(triples) < min_triples:
        raise UserError(
            f"{path}: only {len(triples)} triples; a federated split needs at least {min_triples}"
        )
    return TripleFile(triples, clients if width == 4 else None)
