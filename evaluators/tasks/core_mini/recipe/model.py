"""A small byte-level GPT. The evaluator imports build_model() from the artifact to load the weights.

The model maps bytes (B, T) with T <= model.context to next-byte logits (B, T, 256) and must be causal:
the evaluator checks that no position's prediction depends on later bytes.
"""

import torch
from torch import nn
from torch.nn import functional as F

CONTEXT = 256
HEADS = 4
HEAD_DIM = 16
LAYERS = 2
MLP_RATIO = 4
VOCAB = 256
WIDTH = HEADS * HEAD_DIM


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.ln2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, MLP_RATIO * WIDTH), nn.GELU(), nn.Linear(MLP_RATIO * WIDTH, WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, HEAD_DIM).transpose(1, 3).unbind(dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, WIDTH))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.context = CONTEXT
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Parameter(torch.zeros(CONTEXT, WIDTH))
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_out = nn.LayerNorm(WIDTH)
        nn.init.normal_(self.embed.weight, std=0.02)  # the tied head starts near uniform

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx) + self.position[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_out(x) @ self.embed.weight.T  # output head tied to the embedding: fewer bytes


def build_model() -> nn.Module:
    return GPT()
