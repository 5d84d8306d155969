"""``ecom_ner``: BIO tagging of BRAND, TYPE, COLOR, SIZE, MATERIAL and MODEL in product titles.

Every platform writes titles its own way (field order, separators, a "Size"/"Gr." prefix,
marketing fillers, fields it often leaves out), so a tagger trained on one silo transfers
imperfectly to the others — the cross-silo setting of federated product NER. Model: a CNN tagger
(Collobert et al. 2011). Metrics: token cross-entropy, token accuracy (padding excluded) and
entity-level micro F1 (conlleval; :func:`.metrics.entity_f1`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedray.workloads.ecommerce import corpus as corpora
from fedray.workloads.ecommerce.loaders import read_conll
from fedray.workloads.ecommerce.metrics import entity_f1
from fedray.workloads.ecommerce.models import CNNTagger
from fedray.workloads.ecommerce.task import TextTask

IGNORE = -100  # F.cross_entropy's ignore_index: padding positions carry no loss


class EcomNer(TextTask):
    name = "ecom_ner"
    metric_names = ("entity_f1",)

    def from_world(self, world) -> corpora.Corpus:
        return corpora.ner_corpus(world)

    def from_file(self, path: Path) -> corpora.Corpus:
        return read_conll(path)

    def targets(self, corpus: corpora.Corpus) -> np.ndarray:
        # the tag set comes from the data (user files may tag other types); build_model needs it
        types = sorted({t[2:] for seq in corpus.tags for t in seq if t != "O"})
        self.tag_names = corpora.ner_tag_names(types)
        index = {t: i for i, t in enumerate(self.tag_names)}
        y = np.full((len(corpus), self.cfg.max_len), IGNORE, dtype=np.int64)
        for i, seq in enumerate(corpus.tags):
            ids = [index[t] for t in seq[: self.cfg.max_len]]
            y[i, : len(ids)] = ids
        return y

    def build_model(self) -> torch.nn.Module:
        return CNNTagger(len(self.vocab), self.cfg.embed_dim, self.cfg.hidden, len(self.tag_names))

    @torch.no_grad()
    def evaluate(self, model, x, y) -> dict[str, float]:
        if len(x) == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "entity_f1": float("nan")}
        model.eval()
        logits = model(x)
        pred = logits.argmax(dim=1)
        real = y != IGNORE
        names = np.array(self.tag_names)
        gold_seqs = [list(names[row[m]]) for row, m in zip(y.numpy(), real.numpy(), strict=True)]
        pred_seqs = [list(names[row[m]]) for row, m in zip(pred.numpy(), real.numpy(), strict=True)]
        return {
            "loss": F.cross_entropy(logits, y, ignore_index=IGNORE).item(),
            "accuracy": (pred[real] == y[real]).float().mean().item(),
            "entity_f1": entity_f1(gold_seqs, pred_seqs)[2],
        }
