"""SASRec (Kang & McAuley, 2018): a causal self-attention encoder over item-id sequences.

Inputs are RIGHT-padded with item id 0. Positions are counted from the start of each sequence:
with right padding and causal attention, the output at real position t then depends only on
items 0..t and position embeddings 0..t, so it is independent of how much padding follows, of the
batch's max length, and it equals the output for the prefix 0..t evaluated on its own. That makes
every training position see exactly what evaluation of that prefix sees. (Counting positions from
the last item would give the same item a different position in training than at evaluation.)

The item embedding is tied with the output layer: the loss and the ranking use `item_embedding.weight`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"heads: hidden={hidden} is not divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).split(hidden, dim=2)
        shape = (batch, length, self.heads, hidden // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden))


class PointWiseFeedForward(nn.Module):
    """SASRec's position-wise two-layer network (inner width = hidden, ReLU)."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(hidden, hidden)
        self.outer = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.dropout(F.relu(self.inner(x))))


class Block(nn.Module):
    """Pre-LN transformer block (nanoGPT style): x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden)
        self.attention = CausalSelfAttention(hidden, heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(hidden)
        self.feed_forward = PointWiseFeedForward(hidden, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x)))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class SASRec(nn.Module):
    """forward(inputs [B, L] item ids, right-padded with 0, L <= max_len) -> hidden states [B, L, hidden]."""

    def __init__(
        self, num_items: int, *, max_len: int, hidden: int = 64, blocks: int = 2, heads: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("num_items", num_items), ("max_len", max_len), ("hidden", hidden),
                            ("blocks", blocks), ("heads", heads)):
            if value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        self.num_items = num_items
        self.max_len = max_len
        self.hidden = hidden
        self.item_embedding = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal for every matrix (as the reference SASRec code does), zero biases, unit norms."""
        for name, parameter in self.named_parameters():
            if parameter.dim() >= 2:
                nn.init.xavier_normal_(parameter)
            elif name.endswith("bias"):
                nn.init.zeros_(parameter)
            else:
                nn.init.ones_(parameter)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 2:
            raise ValueError(f"inputs: expected [batch, length] item ids, got shape {tuple(inputs.shape)}")
        length = inputs.shape[1]
        if length > self.max_len:
            raise ValueError(f"inputs: length {length} exceeds the model's max_len {self.max_len}")
        positions = torch.arange(length, device=inputs.device)
        x = self.item_embedding(inputs) * math.sqrt(self.hidden) + self.position_embedding(positions)
        x = self.embedding_dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def last_hidden(self, inputs: torch.Tensor, *, check_lengths: bool = True) -> torch.Tensor:
        """Hidden state at each sequence's last real (non-zero) position: [B, hidden].

        Every row must hold at least one item. check_lengths=False skips that check (it reads a flag back
        from the device) for a caller that checked its rows already.
        """
        lengths = (inputs != 0).sum(dim=1)
        if check_lengths and bool((lengths == 0).any()):
            raise ValueError("inputs: a row has no items (all padding); it has no last position")
        hidden = self.forward(inputs)
        rows = torch.arange(inputs.shape[0], device=inputs.device)
        return hidden[rows, lengths - 1]


__all__ = ["SASRec"]
