"""``ecom_intent`` and ``ecom_relation``: sentence classification tasks over the world's text.

* ``ecom_intent`` — which of nine customer-service intents (refund, shipping status, size
  exchange, invoice, complaint, ...) a customer's message expresses. Each platform has its own
  intent mix and phrases messages with its own subset of templates, so platforms are non-IID in
  both labels and wording. Model: fastText bag of embeddings.
* ``ecom_relation`` — the relation (hasBrand, inCategory, hasColor, madeOf, compatibleWith,
  originCountry or none) between the two marked entities ``[E1] … [/E1]`` and ``[E2] … [/E2]``
  of a sentence. Model: a CNN with max-pooling (Zeng et al. 2014).

Metrics: cross-entropy, accuracy and macro F1 (:func:`.metrics.macro_f1`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedray.workloads.ecommerce import corpus as corpora
from fedray.workloads.ecommerce.loaders import read_labelled_csv
from fedray.workloads.ecommerce.metrics import macro_f1
from fedray.workloads.ecommerce.models import BagOfEmbeddings, SentenceCNN
from fedray.workloads.ecommerce.task import TextTask


class _Classification(TextTask):
    metric_names = ("macro_f1",)

    def from_file(self, path: Path) -> corpora.Corpus:
        return read_labelled_csv(path)

    def targets(self, corpus: corpora.Corpus) -> np.ndarray:
        return corpus.labels

    @property
    def num_classes(self) -> int:
        return len(self.corpus.label_names)

    @torch.no_grad()
    def evaluate(self, model, x, y) -> dict[str, float]:
        if len(x) == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "macro_f1": float("nan")}
        model.eval()
        logits = model(x)
        pred = logits.argmax(dim=1)
        return {
            "loss": F.cross_entropy(logits, y).item(),
            "accuracy": (pred == y).float().mean().item(),
            "macro_f1": macro_f1(y.numpy(), pred.numpy()),
        }


class EcomIntent(_Classification):
    name = "ecom_intent"

    def from_world(self, world) -> corpora.Corpus:
        return corpora.intent_corpus(world)

    def build_model(self) -> torch.nn.Module:
        return BagOfEmbeddings(len(self.vocab), self.cfg.embed_dim, self.num_classes)


class EcomRelation(_Classification):
    name = "ecom_relation"

    def from_world(self, world) -> corpora.Corpus:
        return corpora.relation_corpus(world)

    def build_model(self) -> torch.nn.Module:
        return SentenceCNN(len(self.vocab), self.cfg.embed_dim, self.cfg.hidden, self.num_classes)
