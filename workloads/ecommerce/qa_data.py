"""Instruction examples (prompt → answer) for federated LLM fine-tuning, from the world or a file.

The world's product QA pairs become "answer the shopper's question about this listing" examples
(the listing's own title and description as the input), and its customer-service messages become
"name the intent of this message" examples; both are grouped by the listing's or message's
platform and shop, so ``partition: natural`` gives one silo per platform. Users bring their own
silos as Alpaca-style JSONL (Taori et al. 2023): one object per line with ``instruction``,
optional ``input``, ``output`` and a ``client`` column naming the silo. Every example is written
with the Alpaca prompt template; the loss is taken on the answer tokens only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray.errors import UserError
from fedray.workloads.ecommerce import lexicon as lx
from fedray.workloads.ecommerce.world import World

QUESTION_KINDS = ("material", "size", "maker", "color")
_KIND_OF = {
    "What material": "material",
    "Which size": "size",
    "Who makes": "maker",
    "Is it": "color",
}
QA_INSTRUCTION = "Answer the shopper's question about this listing."
INTENT_INSTRUCTION = "Name the intent of this customer-service message."


def prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca template (with or without an input)."""
    if input_text:
        return f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class InstructionSet:
    """Examples aligned by index; ``labels`` index ``label_names`` (what Dirichlet partitions skew
    over: the question kind or the intent), ``groups`` the natural silos."""

    prompts: list[str]
    answers: list[str]
    labels: np.ndarray
    label_names: list[str]
    groups: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def from_world(world: World, tasks=("qa", "intent")) -> InstructionSet:
    names = [f"qa:{k}" for k in QUESTION_KINDS] + [f"intent:{i}" for i in lx.INTENTS]
    index = {n: i for i, n in enumerate(names)}
    prompts, answers, labels, rows = [], [], [], []
    if "qa" in tasks:
        for listing, question, answer in world.qa:
            p, s, _ = world.listings[listing]
            title = " ".join(w for w, _ in world.titles[listing])
            context = f"{title}\n{world.descriptions[listing]}\nQuestion: {question}"
            prompts.append(prompt(QA_INSTRUCTION, context))
            answers.append(answer)
            kind = next(k for start, k in _KIND_OF.items() if question.startswith(start))
            labels.append(index[f"qa:{kind}"])
            rows.append((p, s))
    if "intent" in tasks:
        for p, s, text, intent in world.utterances:
            prompts.append(prompt(INTENT_INSTRUCTION, text))
            answers.append(intent)
            labels.append(index[f"intent:{intent}"])
            rows.append((p, s))
    platform = np.array([p for p, _ in rows], np.int64)
    shop = platform * world.params.shops_per_platform + np.array([s for _, s in rows], np.int64)
    return InstructionSet(
        prompts, answers, np.array(labels, np.int64), names, {"platform": platform, "shop": shop}
    )


def read_jsonl(path: str | Path, min_examples: int = 2) -> InstructionSet:
    """An Alpaca-style JSONL file. ``client`` values (any strings or integers) become clients 0…
    in order of first appearance; a file without the column is one pool for iid / Dirichlet /
    power-law partitions. A bad line raises a one-line :class:`UserError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(
            f"{path}: cannot read the instruction file ({err}); check the path"
        ) from None
    prompts, answers, clients, numbers = [], [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{where}: not valid JSON ({err.msg}); write one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object with instruction and output")
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise UserError(
                    f"{where}: {key!r} must be a non-empty string; fill it or remove the line"
                )
        extra = row.get("input", "")
        if not isinstance(extra, str):
            raise UserError(f"{where}: 'input' must be a string (or left out)")
        client = row.get("client")
        if client is not None and (isinstance(client, bool) or not isinstance(client, str | int)):
            raise UserError(f"{where}: 'client' must be a string or an integer, got {client!r}")
        prompts.append(prompt(row["instruction"], extra))
        answers.append(row["output"])
        clients.append(client)
        numbers.append(number)
    if len(prompts) < min_examples:
        raise UserError(
            f"{path}: {len(prompts)} instruction rows; a federation needs at least {min_examples}"
        )
    present = [c is not None for c in clients]
    if any(present) and not all(present):
        first = present.index(not present[0])
        raise UserError(
            f"{path}: line {numbers[first]} has {'no' if present[0] else 'a'} client unlike "
            f"line {numbers[0]}; give every line a client or none"
        )
    groups = None
    if all(present):
        ids: dict = {}
        platform = np.array([ids.setdefault(c, len(ids)) for c in clients], np.int64)
        groups = {"platform": platform, "shop": platform}
    return InstructionSet(prompts, answers, np.zeros(len(prompts), np.int64), ["example"], groups)
