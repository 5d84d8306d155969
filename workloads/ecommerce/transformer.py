"""A tiny causal transformer LM, optionally with LoRA adapters as its only trainable weights.

Pre-norm GPT-style blocks (Radford et al. 2019) with tied input/output embeddings (Press & Wolf
2017). With ``lora_rank`` set, every linear map becomes W₀x + B A x (Hu et al. 2022, "LoRA:
Low-Rank Adaptation of Large Language Models", eq. 3; A Gaussian, B zero, scale α/r = 1 — the
paper sets α to the first r it tries). The frozen W₀, the embeddings and biases are *buffers*
drawn from a generator seeded by ``base_seed`` — the same in every process — so
``model.parameters()``, which fedray flattens, sends and counts in bytes, holds the adapters
alone: only adapters train and travel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _uniform(gen: torch.Generator, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


class FrozenLinear(nn.Module):
    """``nn.Linear``'s initialisation (U(±1/√in)) as buffers, plus an optional LoRA pair."""

    def __init__(self, in_f: int, out_f: int, rank: int, gen: torch.Generator):
        super().__init__()
        bound = 1 / math.sqrt(in_f)
        self.register_buffer("weight", _uniform(gen, (out_f, in_f), bound))
        self.register_buffer("bias", _uniform(gen, (out_f,), bound))
        # A ~ N(0, 1/r)-scaled Gaussian, B = 0: the adapted model starts as the base model
        self.lora_a = nn.Parameter(torch.randn(rank, in_f) / math.sqrt(in_f))
        self.lora_b = nn.Parameter(torch.zeros(out_f, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, linear):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(d, elementwise_affine=False)
        self.qkv, self.proj = linear(d, 3 * d), linear(d, d)
        self.ff1, self.ff2 = linear(d, ff), linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        # causal: padding sits after the text, so real tokens never attend to it
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class TinyLM(nn.Module):
    """Logits ``[batch, vocab, length]`` for the next token at every position."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        d: int = 128,
        layers: int = 2,
        heads: int = 4,
        ff: int = 256,
        lora_rank: int | None = None,
        base_seed: int = 0,
    ):
        super().__init__()
        if d % heads:
            raise ValueError(f"embed_dim {d} must be divisible by num_heads {heads}")
        gen = torch.Generator().manual_seed(base_seed)
        if lora_rank:

            def linear(i, o):
                return FrozenLinear(i, o, lora_rank, gen)

            self.register_buffer("tok", torch.randn(vocab_size, d, generator=gen) * 0.02)
            self.register_buffer("pos", torch.randn(max_len, d, generator=gen) * 0.02)
        else:
            linear = nn.Linear
            self.tok = nn.Parameter(torch.randn(vocab_size, d) * 0.02)
            self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, ff, linear) for _ in range(layers))
        self.ln = nn.LayerNorm(d, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok[x] + self.pos[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return (self.ln(h) @ self.tok.T).transpose(1, 2)  # tied output embedding
