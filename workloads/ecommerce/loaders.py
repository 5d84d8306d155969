"""Loaders for data users bring instead of the generated world (``workload.source: <path>``).

* CSV with a header ``text,label`` (intents, relations; RFC 4180 quoting for commas in texts).
  Relation sentences mark their entities ``[E1] ... [/E1]`` and ``[E2] ... [/E2]``.
* Plain UTF-8 text (LM): one document per line, blank lines skipped.
* CoNLL-style token/tag files (NER): one ``token tag`` per line (whitespace-separated, the tag
  last), a blank line between sentences, ``-DOCSTART-`` lines ignored; tags are ``O``, ``B-X`` or
  ``I-X``.
* Interactions (recommendation): CSV or Parquet with columns ``user_id,item_id,timestamp``
  (others ignored); ids are any strings or integers, timestamps numbers or ISO 8601 dates.
* Knowledge-graph triples (KG): TSV lines ``head<TAB>relation<TAB>tail`` with an optional 4th
  column ``client`` (which client holds the triple; a triple may be listed under several).

A malformed file raises :class:`fedray.errors.UserError` with one line naming the file, the line
and the problem, and saying how to fix it.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fedray import userfiles
from fedray.errors import UserError, one_line
from fedray.userfiles import MAX_FLOAT, require_file, short_repr
from fedray.workloads.ecommerce.corpus import Corpus
from fedray.workloads.ecommerce.text import tokenize


def _open(path: Path) -> str:
    """The file's UTF-8 text; missing, empty, binary and non-UTF-8 files are refused."""
    return userfiles.read_text(
        path,
        f"workload.source {str(path)!r}",
        "give the path of your data file (its format: see the README)",
    )


def _csv_rows(reader, path: Path):
    """The rows of ``reader``; a malformed one is refused with its line number."""
    try:
        yield from reader
    except csv.Error as err:
        raise UserError(
            f"{path}: line {reader.line_num}: not valid CSV ({one_line(err)}); check its quotes"
        ) from None


def read_labelled_csv(path: str | Path, min_examples: int = 2) -> Corpus:
    """``text,label`` rows -> a corpus whose label names are the sorted distinct labels."""
    path = Path(path)
    lines = _open(path).splitlines()
    rows = list(_csv_rows(csv.reader(lines), path))
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
                f"{path}: line {number}: expected 'token tag', got {short_repr(line.strip())}; put the tag "
                "after the token, separated by whitespace"
            )
        tag = fields[-1]
        if not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
            raise UserError(
                f"{path}: line {number}: tag {short_repr(tag)} is not BIO; use O, B-TYPE or I-TYPE"
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


# ----------------------------------------------------------------------------- interactions

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")


@dataclass(frozen=True)
class Interactions:
    """Interaction rows with users and items renumbered ``0..U-1`` and ``0..I-1`` in the sorted
    order of their ids (numeric order when every id is an integer)."""

    path: Path
    user: np.ndarray  # int64, one per row
    item: np.ndarray  # int64
    timestamp: np.ndarray  # float64 (seconds for dates)
    user_names: np.ndarray  # the file's ids, indexed by the new ids
    item_names: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.user_names)

    @property
    def num_items(self) -> int:
        return len(self.item_names)


def read_interactions(path: str | Path) -> Interactions:
    """``user_id,item_id,timestamp`` rows from a CSV (header first) or Parquet file
    (``.parquet``/``.pq``)."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa

        try:
            users, items, times = _parquet_interactions(path)
        except (pa.ArrowException, UnicodeDecodeError) as err:  # damaged names or values
            raise UserError(f"{path}: not a readable Parquet file ({one_line(err, 120)})") from None
    else:
        users, items, times = _csv_interactions(path)
    if not users:
        raise UserError(f"{path}: no interaction rows; add user_id,item_id,timestamp rows")
    user_names, user = _renumber(users)
    item_names, item = _renumber(items)
    return Interactions(path, user, item, np.asarray(times, np.float64), user_names, item_names)


def _csv_interactions(path: Path) -> tuple[list, list, list]:
    reader = csv.reader(io.StringIO(_open(path)))
    rows = _csv_rows(reader, path)
    header = [c.strip().lower() for c in next(rows, [])]
    missing = [c for c in INTERACTION_COLUMNS if c not in header]
    if missing:
        raise UserError(
            f"{path}: line 1: missing column {missing[0]!r}; the header needs "
            f"{','.join(INTERACTION_COLUMNS)}"
        )
    repeated = next((c for c in INTERACTION_COLUMNS if header.count(c) > 1), None)
    if repeated:
        raise UserError(f"{path}: line 1: column {repeated!r} appears twice; keep one")
    at = [header.index(c) for c in INTERACTION_COLUMNS]
    users, items, times = [], [], []
    for row in rows:
        where = f"{path}: line {reader.line_num}"
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise UserError(
                f"{where}: expected {len(header)} columns like the header, got {len(row)}; "
                'quote ids that contain commas ("a, b")'
            )
        user, item, stamp = (row[i].strip() for i in at)
        _check_id(where, "user_id", user)
        _check_id(where, "item_id", item)
        users.append(user), items.append(item), times.append(_timestamp(where, stamp))
    return users, items, times


def _parquet_interactions(path: Path) -> tuple[list, list, list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    require_file(path, f"workload.source {str(path)!r}", "give the path of your data file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:  # ValueError: bad UTF-8 metadata
        raise UserError(f"{path}: not a readable Parquet file ({one_line(err, 120)})") from None
    names = [n.lower() for n in table.column_names]
    missing = [c for c in INTERACTION_COLUMNS if c not in names]
    if missing:
        raise UserError(
            f"{path}: missing column {missing[0]!r}; the file needs columns "
            f"{','.join(INTERACTION_COLUMNS)}"
        )
    repeated = next((c for c in INTERACTION_COLUMNS if names.count(c) > 1), None)
    if repeated:
        raise UserError(f"{path}: column {repeated!r} appears twice (ignoring case); keep one")
    column = {c: table.column(names.index(c)) for c in INTERACTION_COLUMNS}
    for name in ("user_id", "item_id"):
        kind = column[name].type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        # floats too: pandas stores an integer column with a missing value as float64
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                or pa.types.is_string(kind) or pa.types.is_large_string(kind)):  # fmt: skip
            raise UserError(
                f"{path}: column {name!r} holds {kind} values; ids must be integers or strings"
            )
    stamps, scale = column["timestamp"], 1.0
    if pa.types.is_timestamp(stamps.type) or pa.types.is_date(stamps.type):
        try:
            stamps = stamps.cast(pa.timestamp("us")).cast(pa.int64())
        except pa.ArrowException as err:
            raise UserError(
                f"{path}: column 'timestamp' holds dates outside what a timestamp can hold "
                f"({one_line(err, 100)}); use seconds since 1970 or ISO 8601 dates"
            ) from None
        scale = 1e-6  # -> seconds
    users, items = column["user_id"].to_pylist(), column["item_id"].to_pylist()
    times = []
    rows = zip(users, items, stamps.to_pylist(), strict=True)
    for row, (user, item, stamp) in enumerate(rows, start=1):
        where = f"{path}: row {row}"
        users[row - 1] = _parquet_id(where, "user_id", user)
        items[row - 1] = _parquet_id(where, "item_id", item)
        if stamp is None:
            raise UserError(f"{where}: empty timestamp; fill it or remove the row")
        times.append(_timestamp(where, stamp) * scale)
    return users, items, times


def _parquet_id(where: str, column: str, value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            value = None  # a missing id, as pandas writes one
        elif not value.is_integer() or abs(value) > 2**53:
            raise UserError(
                f"{where}: {column} {short_repr(value)} is not an integer; ids are integers or "
                "strings"
            )
        else:
            value = int(value)
    _check_id(where, column, value)
    return str(value)


def _check_id(where: str, column: str, value) -> None:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: empty {column}; fill it or remove the row")


def _timestamp(where: str, value) -> float:
    """A number, or an ISO 8601 date/datetime (naive ones read as UTC) in seconds."""
    if isinstance(value, bool):
        number = math.nan  # refused below: True is not a time
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except (ValueError, OverflowError):
            try:
                moment = datetime.fromisoformat(text)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                number = moment.timestamp()
            except (ValueError, OverflowError):
                raise UserError(
                    f"{where}: timestamp {short_repr(text)} is neither a number nor an ISO 8601 "
                    "date; use e.g. 1700000000 or 2024-05-01T12:00:00"
                ) from None
    if not np.isfinite(number) or abs(number) > MAX_FLOAT:
        problem = "is too large" if np.isfinite(number) else "is not finite"
        raise UserError(
            f"{where}: timestamp {short_repr(value)} {problem}; use a real time, e.g. 1700000000 "
            "or 2024-05-01T12:00:00"
        )
    return number


def _renumber(ids: list) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, each row's index among them); integer ids sort as numbers.

    Ids are integers only if each one is written as Python writes it back: otherwise '05' and
    '5', or '1_000' and '1000', would silently become one user."""
    try:
        numbers = [int(v) for v in ids]
        if any(str(n) != str(v) for n, v in zip(numbers, ids, strict=True)):
            raise ValueError("not canonical")
        values = np.array(numbers, np.int64)
    except (ValueError, OverflowError):
        values = np.array([str(v) for v in ids])
    names, codes = np.unique(values, return_inverse=True)
    return names, codes.astype(np.int64)


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
