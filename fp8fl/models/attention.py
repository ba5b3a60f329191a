"""Multi-head self-attention written out op by op, so QAT can quantize the inputs of both matmuls.

``nn.MultiheadAttention`` fuses the q/k/v projections into one weight and hides the two matmuls,
which would leave no per-tensor α for q, k and v and no place to put FP8 on the matmul operands.
Here q, k and v are separate bias-free ``nn.Linear`` layers (as in KWT), the output projection has a
bias, and every matmul operand passes through ``matmul_input``: the identity in FP32, FP8
fake quantization in the QAT subclass (``fp8fl.models.qat.QSelfAttention``). Softmax is always FP32.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SelfAttention"]


class SelfAttention(nn.Module):
    """softmax(q·kᵀ/√d)·v over inputs of shape N×T×dim, ``heads`` heads of size d = dim/heads."""

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q, self.k, self.v))
        scores = self.matmul_input(q, "q") @ self.matmul_input(k, "k").transpose(-2, -1)
        probs = (scores * self.scale).softmax(dim=-1)
        mixed = self.matmul_input(probs, "probs") @ self.matmul_input(v, "v")
        return self.out(mixed.transpose(1, 2).flatten(2))

    def matmul_input(self, x: torch.Tensor, operand: str) -> torch.Tensor:
        """Hook on each matmul operand (``q``, ``k``, ``probs``, ``v``): unchanged in FP32."""
        return x

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.heads, -1).transpose(1, 2)
