"""The authors' training step (`circuit_sparsity/train.py` with its GPT), written from their published
algorithm for timing beside ours on the same shape; CUDA, AMP and the gradient scaler dropped.

What a step does, in their order:
  forward: token + learned position embeddings; per layer, pre-norm RMSNorm, attention with one fused
  q/k/v projection (biases on), AbsTopK by `topk` + `scatter` at attn_in, q, k and v (over all heads
  together), attn_out, mlp_in, the MLP neurons and mlp_out; sinks (when on) as an extra zero key and
  value with an additive float mask; GELU MLP; final RMSNorm, untied unembedding plus the bigram
  table's row; cross-entropy.
  backward; one global gradient rescale to RMS 1 (`grad /= rms + 1e-5`, nothing clipped);
  Adam (fused where PyTorch has it, eps 0.1, betas 0.9/0.95, no built-in decay);
  weight top-k on every matrix and bias: per hidden neuron the 4 largest are forced in (set to 1e10),
  then a global `topk` over the flattened matrix; biases get their top-k computed but not applied;
  decoupled weight decay `p -= wd * lr * p` on every matrix except the bigram table.
Gradient checkpointing (on in their script: a second forward of every sublayer in the backward) is
left out by default, as it only trades memory for time (`checkpointing=True` puts it back). On CUDA
the forward runs under bf16 autocast, as ours does (their script uses fp16 with a gradient scaler);
on CPU both run in fp32.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def abs_topk(x: torch.Tensor, keep_fraction: float | None) -> torch.Tensor:
    if keep_fraction is None:
        return x
    k = int(keep_fraction * x.shape[-1])
    _, indices = torch.topk(x.abs(), k, dim=-1, sorted=False)
    return torch.zeros_like(x).scatter_(-1, indices, x.gather(-1, indices))


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, d_head: int, sink: bool, keep: float | None):
        super().__init__()
        self.heads, self.d_head, self.keep = heads, d_head, keep
        self.qkv = nn.Linear(d_model, 3 * heads * d_head)
        self.out = nn.Linear(heads * d_head, d_model)
        self.sink_logit = nn.Parameter(torch.zeros(heads)) if sink else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(abs_topk(x, self.keep)).split(self.heads * self.d_head, dim=2)
        q, k, v = (abs_topk(t, self.keep).view(B, T, self.heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        if self.sink_logit is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # one extra key and value of zeros, always visible, with a learned logit per head
            zeros = q.new_zeros(B, self.heads, 1, self.d_head)
            k, v = torch.cat([zeros, k], dim=2), torch.cat([zeros, v], dim=2)
            allowed = torch.ones(T, T + 1, dtype=torch.bool, device=x.device).tril(diagonal=1)
            mask = torch.zeros(B, self.heads, T, T + 1, dtype=q.dtype, device=x.device)
            mask.masked_fill_(~allowed, torch.finfo(q.dtype).min)
            mask[..., 0] += self.sink_logit.view(1, -1, 1).to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return abs_topk(self.out(y.transpose(1, 2).reshape(B, T, -1)), self.keep)


class MLP(nn.Module):
    def __init__(self, d_model: int, width: int, keep: float | None):
        super().__init__()
        self.fc, self.proj, self.keep = nn.Linear(d_model, width), nn.Linear(width, d_model), keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = abs_topk(F.gelu(self.fc(abs_topk(x, self.keep))), self.keep)
        return abs_topk(self.proj(hidden), self.keep)


class AuthorsGPT(nn.Module):
    def __init__(self, vocab: int, d_model: int, n_layer: int, d_head: int, ctx: int, keep: float | None,
                 sink: bool = True, bigram: bool = True, checkpointing: bool = False):
        super().__init__()
        heads = d_model // d_head
        self.wte, self.wpe = nn.Embedding(vocab, d_model), nn.Embedding(ctx, d_model)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(2 * n_layer))
        self.attns = nn.ModuleList(Attention(d_model, heads, d_head, sink, keep) for _ in range(n_layer))
        self.mlps = nn.ModuleList(MLP(d_model, 4 * d_model, keep) for _ in range(n_layer))
        self.ln_f, self.lm_head = nn.RMSNorm(d_model), nn.Linear(d_model, vocab, bias=False)
        self.bigram_table = nn.Parameter(torch.rand(vocab, vocab) * 0.02) if bigram else None
        self.checkpointing = checkpointing
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != "bigram_table":
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer) if name.endswith(("out.weight", "proj.weight")) else 0.02)
        nn.init.zeros_(self.wpe.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens) + self.wpe.weight[: tokens.shape[1]]
        for i, (attn, mlp) in enumerate(zip(self.attns, self.mlps)):
            for norm, sublayer in ((self.norms[2 * i], attn), (self.norms[2 * i + 1], mlp)):
                run = lambda h, norm=norm, sublayer=sublayer: sublayer(norm(h))
                x = x + (checkpoint(run, x, use_reentrant=False) if self.checkpointing else run(x))
        logits = self.lm_head(self.ln_f(x))
        return logits + F.embedding(tokens, self.bigram_table) if self.bigram_table is not None else logits


HIDDEN_ROWS, HIDDEN_COLUMNS = ("qkv.weight", "fc.weight"), ("out.weight", "proj.weight")  # the neuron's side


@torch.no_grad()
def apply_topk(model: AuthorsGPT, l0_fraction: float, min_alive: int = 4) -> None:
    for name, p in model.named_parameters():
        if name == "bigram_table" or not (p.dim() > 1 or "bias" in name):
            continue
        k = int(min(l0_fraction, 1.0) * p.numel())
        score = p.abs()
        if name.endswith(HIDDEN_ROWS + HIDDEN_COLUMNS) and min_alive > 0:
            dim = 1 if name.endswith(HIDDEN_ROWS) else 0
            forced = torch.topk(score, min_alive, dim=dim, sorted=False).indices
            score.scatter_(dim, forced, 1e10)
        indices = torch.topk(score.flatten(), k, sorted=False).indices
        if p.dim() == 2:  # biases: computed, never applied (as in their script)
            drop = torch.ones(p.numel(), dtype=torch.bool, device=p.device).index_fill_(0, indices, False)
            p.view(-1)[drop] = 0


class AuthorsStep:
    """Their model, optimizer and step on one fixed batch."""

    def __init__(self, vocab: int, d_model: int, n_layer: int, d_head: int, ctx: int, batch: int, sparse: bool,
                 l0_fraction: float, keep_fraction: float, sink: bool, device: torch.device, lr: float = 1.28e-2,
                 weight_decay: float = 0.1, checkpointing: bool = False):
        torch.manual_seed(0)
        self.model = AuthorsGPT(vocab, d_model, n_layer, d_head, ctx, keep_fraction if sparse else None, sink,
                                checkpointing=checkpointing).to(device)
        fused = device.type == "cuda" or tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 4)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.95), eps=0.1, fused=fused)
        self.sparse, self.l0_fraction, self.lr, self.weight_decay = sparse, l0_fraction, lr, weight_decay
        if sparse:
            apply_topk(self.model, l0_fraction)
        self.tokens = torch.randint(0, vocab, (batch, ctx + 1), device=device)
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def step(self) -> float:
        params = list(self.model.parameters())
        self.optimizer.zero_grad()
        with self.autocast():
            logits = self.model(self.tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), self.tokens[:, 1:].reshape(-1))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1e10)  # only the global norm: nothing is clipped
        rms = norm / math.sqrt(sum(p.numel() for p in params))
        for p in params:
            p.grad /= rms + 1e-5
        self.optimizer.step()
        if self.sparse:
            apply_topk(self.model, self.l0_fraction)
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if p.dim() > 1 and name != "bigram_table":
                    p -= self.weight_decay * self.lr * p
        return float(loss.detach())
