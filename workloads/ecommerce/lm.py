"""``ecom_lm``: causal language-model pre-training over product text, fully or with LoRA.

Documents are the world's titles, descriptions and QA pairs (each platform writes titles its own
way), one client per platform or shop by default. The model is :class:`.transformer.TinyLM`
(2 layers, d = 128), optionally pre-trained centrally on a public world first (``pretrain_steps``;
:mod:`.pretrain`). With ``lora_rank`` set only the adapters are parameters — only they train,
travel and are counted in ``bytes_up`` / ``bytes_down`` — the way federated fine-tuning of large
models saves communication (e.g. Zhang et al. 2024, "Towards Building the FederatedGPT"). Metrics:
token cross-entropy, next-token accuracy and held-out perplexity exp(mean token NLL).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedray import seeding
from fedray.workloads.ecommerce import corpus as corpora
from fedray.workloads.ecommerce import pretrain
from fedray.workloads.ecommerce.loaders import read_text
from fedray.workloads.ecommerce.task import TextTask, world_params
from fedray.workloads.ecommerce.transformer import TinyLM
from fedray.workloads.ecommerce.world import load_or_generate

IGNORE = -100
_EVAL_CHUNK = 256  # examples per forward pass: full-vocabulary logits of a whole split are large


class EcomLM(TextTask):
    name = "ecom_lm"
    metric_names = ("perplexity",)

    def from_world(self, world) -> corpora.Corpus:
        return corpora.lm_corpus(world)

    def from_file(self, path: Path) -> corpora.Corpus:
        return read_text(path)

    def inputs(self, corpus: corpora.Corpus) -> np.ndarray:
        return self.vocab.encode([t[:-1] for t in corpus.tokens], self.cfg.max_len)

    def targets(self, corpus: corpora.Corpus) -> np.ndarray:
        y = self.vocab.encode([t[1:] for t in corpus.tokens], self.cfg.max_len)
        y[y == 0] = IGNORE  # id 0 is padding
        return y

    def build_model(self) -> torch.nn.Module:
        model = self._model(self.cfg.lora_rank)
        base = self._pretrained_base()
        if base is not None:
            # the same keys are parameters of a full model and frozen buffers under LoRA
            model.load_state_dict(base, strict=False)
        return model

    def _model(self, lora_rank: int | None) -> TinyLM:
        cfg = self.cfg
        return TinyLM(
            len(self.vocab),
            cfg.max_len,
            d=cfg.embed_dim,
            layers=cfg.num_layers,
            heads=cfg.num_heads,
            ff=cfg.hidden,
            lora_rank=lora_rank,
            # the frozen base must be identical in every process: derive it from the run seed
            base_seed=self._base_seed,
        )

    @property
    def _base_seed(self) -> int:
        return seeding.purpose_code("ecom_lm.base") ^ self.seed

    def _pretrained_base(self) -> dict[str, torch.Tensor] | None:
        """The base pre-trained on the public world (``pretrain_steps`` > 0), computed once."""
        cfg = self.cfg
        if not cfg.pretrain_steps:
            return None
        if getattr(self, "_base", None) is None:
            params = pretrain.public_world_params(world_params(cfg.world, self.seed))
            public = corpora.lm_corpus(load_or_generate(params, cfg.world.cache_dir))
            key = {
                "world": params.key(),
                "vocab": hashlib.sha256("\n".join(self.vocab.itos).encode()).hexdigest(),
                "model": [cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.hidden, cfg.max_len],
                "train": [cfg.pretrain_steps, pretrain.BATCH_SIZE, pretrain.LR, self._base_seed],
            }
            self._base = pretrain.pretrained_state(
                lambda: self._model(None),
                self.inputs(public),
                self.targets(public),
                cfg.pretrain_steps,
                self._base_seed,
                key,
                cfg.world.cache_dir,
            )
        return self._base

    @torch.no_grad()
    def evaluate(self, model, x, y) -> dict[str, float]:
        nll, correct, tokens = token_scores(model, x, y, _EVAL_CHUNK)
        if not tokens:
            return {"loss": float("nan"), "accuracy": float("nan"), "perplexity": float("nan")}
        loss = nll / tokens
        return {"loss": loss, "accuracy": correct / tokens, "perplexity": math.exp(loss)}


@torch.no_grad()
def token_scores(model, x, y, chunk: int) -> tuple[float, float, float]:
    """Summed next-token cross-entropy, correct argmax predictions and scored tokens (targets
    other than ``IGNORE``) of a language model whose ``model(x)`` gives [batch, vocab, length]
    logits, ``chunk`` examples per forward pass (full-vocabulary logits are large)."""
    nll = correct = tokens = 0.0
    model.eval()
    for xb, yb in zip(torch.split(x, chunk), torch.split(y, chunk), strict=True):
        logits = model(xb)
        real = yb != IGNORE
        nll += F.cross_entropy(logits, yb, ignore_index=IGNORE, reduction="sum").item()
        correct += (logits.argmax(dim=1)[real] == yb[real]).sum().item()
        tokens += real.sum().item()
    return nll, correct, tokens


def unigram_perplexity(
    train_targets: np.ndarray, test_targets: np.ndarray, vocab_size: int
) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on the train targets: the trivial
    baseline a language model has to beat."""
    counts = np.bincount(train_targets[train_targets != IGNORE], minlength=vocab_size) + 1.0
    log_p = np.log(counts / counts.sum())
    test = test_targets[test_targets != IGNORE]
    return float(np.exp(-log_p[test].mean()))
