"""Small text models, sized so a 2-core laptop trains hundreds of clients in minutes.

Inputs are padded id tensors ``[batch, length]`` with 0 as padding. Token-level models return
logits as ``[batch, classes, length]`` — the layout ``F.cross_entropy`` takes for sequences — so
padding positions labelled -100 drop out of the loss and :func:`fedray.training.local_sgd` (with
its FedProx term) trains taggers unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class BagOfEmbeddings(nn.Module):
    """fastText's classifier (Joulin et al. 2017, "Bag of Tricks for Efficient Text
    Classification"): the mean of the word embeddings, then a linear layer."""

    def __init__(self, vocab_size: int, embed_dim: int, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.out = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x != 0).unsqueeze(-1).float()
        mean = (self.embed(x) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.out(mean)


class SentenceCNN(nn.Module):
    """Convolution over word embeddings with max-pooling over time (Zeng et al. 2014, "Relation
    Classification via Convolutional Deep Neural Network"; Kim 2014). Entity markers in the
    text stand in for Zeng's position features (Soares et al. 2019 show markers work as well)."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.conv = nn.Conv1d(embed_dim, hidden, kernel_size=3, padding=1)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(self.embed(x).transpose(1, 2)))  # [B, hidden, L]
        h = h.masked_fill((x == 0).unsqueeze(1), float("-inf")).amax(dim=2)
        return self.out(torch.nan_to_num(h, neginf=0.0))  # an all-padding row pools to 0


class CNNTagger(nn.Module):
    """Per-token tags from two stacked width-3 convolutions over word embeddings, the window
    approach of Collobert et al. 2011 ("Natural Language Processing (Almost) from Scratch"),
    without the CRF. Each tag sees five words of context."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, num_tags: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.conv1 = nn.Conv1d(embed_dim, hidden, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel_size=3, padding=1)
        self.out = nn.Conv1d(hidden, num_tags, kernel_size=1)  # a linear layer per position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(self.embed(x).transpose(1, 2)))
        h = torch.relu(self.conv2(h))
        return self.out(h)  # [B, tags, L]
