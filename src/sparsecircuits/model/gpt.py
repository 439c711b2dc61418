"""SparseGPT: the one forward pass, with a named site at every node and residual point.

Pre-norm GPT with RMSNorm, untied embedding and unembedding, optional learned absolute
positions, attention sinks, a dense bigram table added to the logits, a GELU MLP, biases,
and AbsTopK at the eight node sites of every block (docs/method.md 1.2 and 1.3). The options the
authors' released models use are config keys: LayerNorm, ReLU MLPs, a ReLU on the residual
stream, AbsTopK on the residual stream, positions concatenated to every sublayer's input (learned
or sinusoidal), tied unembedding, projections without biases, AbsTopK off at some site kinds and
the floor rounding of its k.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NODE_SITE_KINDS, ModelConfig
from ..errors import SparseCircuitsError
from .sites import Hook, Site, SiteHooks, Sites, record_into, residual_sites
from .sparsity import abs_topk, linear_abs_topk


# The CPU flash kernel with its log-sum-exp and its backward (aten operators since PyTorch 2.2).
_CPU_FLASH_WITH_LSE = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")


class _CpuSinkAttention(torch.autograd.Function):
    """Causal attention with sinks from PyTorch's CPU flash kernel without the sink (head dim D, T
    keys). A zero-value key of logit s scales each query's output by the attention left to the
    real keys, sigmoid(lse - s), where lse is the log-sum-exp of the query's scores, which the kernel
    returns. The backward is the kernel's own with two substitutions: the gradient reaching the
    sink-free output is g * sigmoid(lse - s), and the output whose row-wise product with that
    gradient the kernel subtracts is the final one, which also carries the gradient through lse."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink_logit: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / math.sqrt(q.shape[-1])
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
        to_keys = torch.sigmoid(lse - sink_logit.float().view(1, -1, 1))  # (B, H, T), float32
        out = out * to_keys.unsqueeze(-1).to(out.dtype)
        ctx.save_for_backward(q, k, v, out, lse, to_keys)
        ctx.scale, ctx.sink_dtype = scale, sink_logit.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, out, lse, to_keys = ctx.saved_tensors
        grad = grad.contiguous()
        grad_sink_free = grad * to_keys.unsqueeze(-1).to(grad.dtype)
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_sink_free, q, k, v, out, lse, 0.0, True, scale=ctx.scale)
        grad_sink = -((grad.float() * out.float()).sum(-1) * (1 - to_keys)).sum((0, 2))
        return dq, dk, dv, grad_sink.to(ctx.sink_dtype)


def attention_with_sinks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink_logit: torch.Tensor | None) -> torch.Tensor:
    """Causal attention over (B, H, T, D) with an extra always-visible key of logit `sink_logit`
    (one per head) and value zero: `_CpuSinkAttention` on CPU, else `sink_attention_by_extra_key`."""
    if sink_logit is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if q.device.type == "cpu" and _CPU_FLASH_WITH_LSE and not torch.compiler.is_compiling():
        return _CpuSinkAttention.apply(q, k, v, sink_logit)
    return sink_attention_by_extra_key(q, k, v, sink_logit)


def sink_attention_by_extra_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink_logit: torch.Tensor) -> torch.Tensor:
    """Attention with sinks by any fused kernel, instead of a (B, H, T, T+1) mask: queries and keys
    get one more dimension (1 for queries, sink / scale for the sink key), the sink key goes first,
    and a dummy first query keeps the kernel's top-left causal alignment, so query t sees the sink
    and keys 0..t."""
    batch, heads, _, d_head = q.shape
    scale = 1.0 / math.sqrt(d_head)
    q_aug = F.pad(q, (0, 1), value=1.0)
    q_aug = F.pad(q_aug, (0, 0, 1, 0))  # dummy query at position 0
    sink_key = F.pad((sink_logit / scale).view(1, heads, 1, 1), (d_head, 0)).expand(batch, heads, 1, d_head + 1)
    k_aug = torch.cat([sink_key.to(k.dtype), F.pad(k, (0, 1))], dim=2)
    v_aug = F.pad(v, (0, 1, 1, 0))  # zero value for the sink, zero extra dim
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, is_causal=True, scale=scale)
    return out[:, :, 1:, :d_head]


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """Fixed position channels: sines then cosines of periods log-spaced from 4 tokens to `length`
    (the authors' `sinusoidal_cat_pos_emb`), zero-padded to `width`."""
    half = max(1, width // 2)
    periods = torch.logspace(math.log10(4.0), math.log10(max(4.0, float(length))), steps=half)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * (2 * math.pi / periods)
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, max(0, width - table.shape[1])))[:, :width]


class Norm(nn.Module):
    """RMSNorm, or LayerNorm (optionally with a bias), with a gain per channel."""

    def __init__(self, width: int, config: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if config.norm_bias else None
        self.layer_norm = config.norm == "layer"
        self.eps = config.norm_eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm:
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class TiedUnembedding(nn.Module):
    """Logits = x @ embedding.T + bias: the unembedding of a model whose embedding is tied to it.
    Only the bias is its own (so no state dict holds one tensor twice)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.tied_to = (embedding,)  # a tuple: not registered a second time as a submodule
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tied_to[0].weight, self.bias)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.heads, self.d_head = config.heads, config.d_head
        inner = self.heads * self.d_head
        bias, pos = config.linear_bias, config.concat_positions
        d_in = config.d_model + pos  # a sublayer reads its normed residual, then any position channels
        self.attn_norm = Norm(config.d_model, config)
        self.attn_pos_norm = Norm(pos, config) if pos else None
        self.q_proj = nn.Linear(d_in, inner, bias=bias)
        self.k_proj = nn.Linear(d_in, inner, bias=bias)
        self.v_proj = nn.Linear(d_in, inner, bias=bias)
        self.o_proj = nn.Linear(inner, config.d_model, bias=bias)
        self.sink_logit = nn.Parameter(torch.zeros(self.heads)) if config.attention_sinks else None
        self.mlp_norm = Norm(config.d_model, config)
        self.mlp_pos_norm = Norm(pos, config) if pos else None
        self.fc = nn.Linear(d_in, config.mlp_width, bias=bias)
        self.proj = nn.Linear(config.mlp_width, config.d_model, bias=bias)
        self.mlp_activation = {"gelu": F.gelu, "relu": F.relu}[config.mlp_activation]
        self.residual_activation = {"identity": None, "relu": F.relu}[config.residual_activation]
        self.residual_keep = {kind: config.keep_count(kind, config.d_model) for kind in ("after_attn", "after_mlp")}
        widths = {"attn.act_in": d_in, "attn.q": inner, "attn.k": inner, "attn.v": inner,
                  "attn.resid_delta": config.d_model, "mlp.act_in": d_in,
                  "mlp.post_act": config.mlp_width, "mlp.resid_delta": config.d_model}
        self.site_width = {f"{layer}.{kind}": widths[kind] for kind in NODE_SITE_KINDS}
        self.keep = {f"{layer}.{kind}": config.keep_count(kind, widths[kind]) for kind in NODE_SITE_KINDS}
        # every site a module: blocks[layer].attn.q, blocks[layer].mlp.post_act, blocks[layer].resid_in, ...
        for group in ("attn", "mlp"):
            kinds = [kind.split(".", 1)[1] for kind in NODE_SITE_KINDS if kind.startswith(group + ".")]
            setattr(self, group, Sites(f"{layer}.{group}", kinds))
        self.resid_in, self.resid_mid = Site(f"{layer}.resid_in"), Site(f"{layer}.resid_mid")
        self.site_modules = {s.name: s for s in self.modules() if isinstance(s, Site)}  # by name (a plain dict)

    def node(self, kind: str, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """AbsTopK, then the site: its hooks see exactly what flows on. `in_place`: x is a fresh
        tensor no backward has saved, which the AbsTopK may overwrite."""
        site = f"{self.layer}.{kind}"
        return self.site_modules[site](abs_topk(x, self.keep[site], in_place))

    def linear_node(self, kind: str, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """`node` of linear(x), the linear layer and the AbsTopK in one step (`linear_abs_topk`)."""
        site = f"{self.layer}.{kind}"
        return self.site_modules[site](linear_abs_topk(linear, x, self.keep[site]))

    @staticmethod
    def read(x: torch.Tensor, norm: Norm, pos_norm: Norm | None, pos: torch.Tensor | None) -> torch.Tensor:
        """A sublayer's input: the normed residual, then the normed position channels if concatenated."""
        if pos_norm is None:
            return norm(x)
        return torch.cat([norm(x), pos_norm(pos).expand(*x.shape[:-1], -1)], dim=-1)

    def attention(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """The residual after the attention sublayer, from the residual before it (`resid_in`)."""
        batch, T, _ = x.shape
        a = self.node("attn.act_in", self.read(x, self.attn_norm, self.attn_pos_norm, pos), in_place=True)
        q = self.linear_node("attn.q", self.q_proj, a)
        k = self.linear_node("attn.k", self.k_proj, a)
        v = self.linear_node("attn.v", self.v_proj, a)
        split = lambda t: t.view(batch, T, self.heads, self.d_head).transpose(1, 2)
        z = attention_with_sinks(split(q), split(k), split(v), self.sink_logit)
        z = z.transpose(1, 2).reshape(batch, T, self.heads * self.d_head)
        return self.add_to_residual(x, self.linear_node("attn.resid_delta", self.o_proj, z), "after_attn")

    def feed_forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """The residual after the MLP sublayer, from the residual before it (`resid_mid`)."""
        m = self.node("mlp.act_in", self.read(x, self.mlp_norm, self.mlp_pos_norm, pos), in_place=True)
        # GELU's backward reads its input, ReLU's its output (which must then stay as it is)
        h = self.node("mlp.post_act", self.mlp_activation(self.fc(m)), in_place=self.mlp_activation is F.gelu)
        return self.add_to_residual(x, self.linear_node("mlp.resid_delta", self.proj, h), "after_mlp")

    def add_to_residual(self, x: torch.Tensor, delta: torch.Tensor, where: str) -> torch.Tensor:
        """The residual after a sublayer: the sum, then the optional ReLU and AbsTopK on the stream."""
        x = x + delta
        if self.residual_activation is not None:
            x = self.residual_activation(x)
        return abs_topk(x, self.residual_keep[where])


class SparseGPT(nn.Module):
    """The transformer of `config` (weight-sparse or dense by its training, AbsTopK activations, named
    sites everywhere an activation can be read or replaced). `SparseGPT.from_pretrained(RUN_DIR)` loads a
    trained run with its tokenizer; text helpers, hooks and caches follow TransformerLens's names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise SparseCircuitsError("model.vocab_size must be set (it comes from the tokenizer when training)")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        pos_width = config.concat_positions or config.d_model
        self.wpe = nn.Embedding(config.ctx_len, pos_width) if config.positional != "none" else None
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.final_norm = Norm(config.d_model, config)
        self.lm_head = TiedUnembedding(self.wte) if config.tied_embedding else nn.Linear(config.d_model, config.vocab_size)
        self.bigram = nn.Embedding(config.vocab_size, config.vocab_size) if config.bigram_table else None
        self.site_width = {site: w for block in self.blocks for site, w in block.site_width.items()}
        self.hook_points = SiteHooks(list(self.site_width) + residual_sites(config.n_layer))
        self.final_resid = Site("final_resid")
        self.site_modules = {s.name: s for s in self.modules() if isinstance(s, Site)}  # every site, by name
        for site in self.site_modules.values():
            site.registry = (self.hook_points,)
        # The run's `tokenizers.Tokenizer` when the model was loaded from a run (`Run.model`,
        # `SparseGPT.from_pretrained`), for `to_tokens` and `to_string`; None for a bare model.
        self.tokenizer = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, param in self.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                nn.init.ones_(param)
            elif name.endswith(".bias") or name.endswith("sink_logit") or name.startswith("bigram"):
                nn.init.zeros_(param)
            elif name.endswith(("o_proj.weight", ".proj.weight")):
                nn.init.normal_(param, std=std / math.sqrt(2 * self.config.n_layer))  # residual writes
            else:
                nn.init.normal_(param, std=std)
        if self.config.positional == "concat_sinusoidal":
            with torch.no_grad():
                self.wpe.weight.copy_(sinusoidal_positions(self.config.ctx_len, self.config.d_pos))
            self.wpe.weight.requires_grad_(False)  # fixed: never trained, never sparsified

    @property
    def unembedding_weight(self) -> torch.Tensor:
        """(vocab, d_model): the unembedding's own weight, or the embedding's when they are tied."""
        return self.wte.weight if self.config.tied_embedding else self.lm_head.weight

    # --- sites ---
    @property
    def node_sites(self) -> dict[str, int]:
        """Node site name -> width, in forward order."""
        return dict(self.site_width)

    @property
    def site_widths(self) -> dict[str, int]:
        """Every site (node sites and the residual points that only record) -> width."""
        return {**self.site_width, **{site: self.config.d_model for site in residual_sites(self.config.n_layer)}}

    @property
    def site_names(self) -> tuple[str, ...]:
        return self.hook_points.site_names

    def hooks(self, hooks: Mapping[str, Hook | list[Hook]]):
        """Context manager: run the model with these hooks at these sites.

        The hook contract: `fn(x, site)` gets the activation `x` at the site (after the site's AbsTopK)
        and the site's name; returning None leaves `x` as it is (recording), returning a tensor of `x`'s
        shape puts it in `x`'s place (patching, ablation). Anything else is an error naming the site."""
        return self.hook_points.active(hooks)

    def _names(self, names_filter) -> list[str]:
        """Site names from a name, a list of names, or a predicate on names (TransformerLens's names_filter)."""
        if names_filter is None:
            return list(self.site_names)
        if isinstance(names_filter, str):  # one name, not its characters
            names_filter = [names_filter]
        if callable(names_filter):
            return [site for site in self.site_names if names_filter(site)]
        try:
            names = list(names_filter)
        except TypeError:
            raise TypeError(f"sites must be a site name, a list of names or a predicate on names, not"
                            f" {type(names_filter).__name__}") from None
        unknown = [name for name in names if name not in self.site_names]
        if unknown:
            raise ValueError(f"unknown site {unknown[0]!r}: sites look like 0.attn.q, 0.mlp.post_act, 0.resid_in, final_resid"
                             " (`model.site_names` lists them)")
        return names

    def run_with_hooks(self, tokens, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], Hook]] = (),
                       return_type: str = "logits"):
        """`model(tokens, return_type=...)` with `fwd_hooks`, a list of (site name or a predicate on site
        names, hook) as in TransformerLens; each hook follows `hooks`' contract (`fn(x, site)`)."""
        hooks: dict[str, list[Hook]] = {}
        for names, fn in fwd_hooks:
            for site in self._names(names):
                hooks.setdefault(site, []).append(fn)
        with self.hooks(hooks):
            return self(tokens, return_type=return_type)

    def run_with_cache(self, tokens, sites: Iterable[str] | None = None, detach: bool = True,
                       backward: Callable[[torch.Tensor], torch.Tensor] | None = None, at: torch.Tensor | None = None,
                       names_filter=None):
        """Logits and a dict of the activations at `sites` (default: every site; or `names_filter`, a
        name, a list or a predicate on names, as in TransformerLens). `tokens`: ids or text. With
        `backward`, a function of the logits that returns a scalar (a loss, a logit difference), also
        the gradient of that scalar with respect to each site's activation, through every later path
        (TransformerLens's backward hooks): (logits, cache, grads). The weights' own gradients are left
        untouched."""
        tokens = self._as_tokens(tokens)
        names = self._names(sites if sites is not None else names_filter)
        cache: dict[str, torch.Tensor] = {}
        if backward is None:
            recorder = record_into(cache, detach)
            with self.hooks({site: recorder for site in names}):
                logits = self(tokens, at=at)
            return logits, cache
        zeros: dict[str, torch.Tensor] = {}

        def add_zero(x: torch.Tensor, site: str) -> torch.Tensor:
            # x + 0 is x exactly; the gradient reaching the zero is the one reaching x
            cache[site] = x.detach() if detach else x
            zeros[site] = torch.zeros_like(x, requires_grad=True)
            return x + zeros[site]

        with torch.enable_grad(), self.hooks({site: add_zero for site in names}):
            logits = self(tokens, at=at)
            scalar = backward(logits)
        found = torch.autograd.grad(scalar, list(zeros.values()), allow_unused=True)
        grads = {site: g if g is not None else torch.zeros_like(zeros[site]) for site, g in zip(zeros, found)}
        return logits.detach(), cache, grads

    # --- the forward pass: embed, then each sublayer from the residual site before it, then unembed ---
    def sublayers(self) -> list[tuple[str, Callable]]:
        """(residual site before it, sublayer) for every attention and MLP sublayer, in order."""
        return [(site, part) for block in self.blocks
                for site, part in ((f"{block.layer}.resid_in", block.attention), (f"{block.layer}.resid_mid", block.feed_forward))]

    def forward(self, tokens, at: torch.Tensor | None = None, start: str | None = None,
                residual: torch.Tensor | None = None, stop: str | None = None, return_type: str = "logits"):
        """Logits (B, T, vocab); with `at` (B,) positions, only the logits there, (B, vocab): tasks
        read one position per prompt, and the unembedding is the largest matmul. `tokens`: ids (B, T)
        or (T,), or text (a string or a list of strings, through `to_tokens`). `return_type`: "logits",
        "loss" (the mean next-token cross-entropy over the sequence) or "both" (logits, loss).

        Part of the pass: `start` (a residual site such as "1.resid_mid") begins there with `residual`
        in place of the stream the earlier parts would have made; `stop` returns the residual arriving
        at that site, before its hooks, instead of logits. Hooks fire from `start` (its own included)
        up to `stop` (its own excluded), so a pass stopped at a site and one started there with what it
        returned fire every hook once and compose to the whole pass.
        `tokens` are still needed: positions come from their length, the bigram table from them."""
        if return_type not in ("logits", "loss", "both"):
            raise ValueError(f"return_type must be 'logits', 'loss' or 'both', not {return_type!r}")
        tokens = self._as_tokens(tokens)
        if return_type != "logits":
            logits = self(tokens, at=at, start=start, residual=residual, stop=stop)
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            return loss if return_type == "loss" else (logits, loss)
        T = tokens.shape[1]
        if T > self.config.ctx_len:
            raise ValueError(f"sequence of {T} tokens is longer than the model's context ({self.config.ctx_len})")
        order = residual_sites(self.config.n_layer)
        for name, site in (("start", start), ("stop", stop)):
            if site is not None and site not in order:
                raise KeyError(f"{name} '{site}' is not a residual site: use one of {', '.join(order)}")
        if (start is None) != (residual is None):
            raise ValueError("give `start` and `residual` together: the residual is the stream at that site")
        if start is not None and stop is not None and order.index(stop) < order.index(start):
            raise ValueError(f"stop '{stop}' comes before start '{start}'")
        pos = self.wpe.weight[:T] if self.config.concat_positions else None
        x = self.embed(tokens) if start is None else residual
        running = start is None
        for site, sublayer in self.sublayers():
            running = running or site == start
            if running:
                if site == stop:
                    return x
                x = sublayer(self.site_modules[site](x), pos)
        if stop == "final_resid":
            return x
        return self.unembed(self.final_resid(x), tokens, at)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual stream before the first sublayer (token embedding plus added positions)."""
        x = self.wte(tokens)
        if self.wpe is not None and not self.config.concat_positions:
            x = x + self.wpe.weight[: tokens.shape[1]]
        return x

    def unembed(self, x: torch.Tensor, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the final residual stream (and the bigram table's row of each token)."""
        if at is not None:
            rows, at = torch.arange(len(tokens), device=tokens.device), at.to(tokens.device)
            x, tokens = x[rows, at], tokens[rows, at]
        logits = self.lm_head(self.final_norm(x))
        if self.bigram is not None:
            logits = logits + self.bigram(tokens)
        return logits

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of `targets` (B, T) under the logits of `tokens` (B, T): the training loss."""
        logits = self(tokens)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def generate(self, tokens, max_new_tokens: int = 10, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None):
        """Continue `tokens` (ids (B, T) or (T,), or text) by `max_new_tokens` sampled tokens (greedy at
        temperature 0; `top_k` keeps the k likeliest). Returns the ids with their continuation, or the
        text with its continuation when given text."""
        if isinstance(tokens, str):
            return self.to_string(self.generate(self.to_tokens(tokens), max_new_tokens, temperature, top_k, generator)[0])
        tokens = self._as_tokens(tokens)
        for _ in range(max_new_tokens):
            logits = self(tokens[:, -self.config.ctx_len :])[:, -1].float()
            if not bool(torch.isfinite(logits).all()):
                raise SparseCircuitsError("the model's logits are not finite (its activations overflow): the weights are"
                                          " unusable; train the run again")
            if temperature <= 0:
                next_token = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    cutoff = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < cutoff, -math.inf)
                next_token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            tokens = torch.cat([tokens, next_token], dim=1)
        return tokens

    # --- text in and out, as TransformerLens names them ---
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise SparseCircuitsError("this model has no tokenizer: load it from a run (`SparseGPT.from_pretrained(RUN_DIR)`)")
        return self.tokenizer

    def to_tokens(self, text: str | list[str], prepend_eot: bool = False) -> torch.Tensor:
        """Text as token ids on the model's device: a string as (1, n), a list of strings as (B, n), the
        shorter right-padded with the end-of-text token. Nothing is prepended unless `prepend_eot`
        (the corpus separates documents with it; TransformerLens's prepend_bos)."""
        tokenizer = self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("to_tokens takes a string or a non-empty list of strings")
        eot = tokenizer.token_to_id("<|endoftext|>")
        lists = [([eot] if prepend_eot and eot is not None else []) + tokenizer.encode(t).ids for t in texts]
        width = max(map(len, lists))
        pad = eot if eot is not None else 0
        return torch.tensor([ids + [pad] * (width - len(ids)) for ids in lists], dtype=torch.long,
                            device=self.wte.weight.device)

    def to_string(self, tokens: torch.Tensor | Iterable[int] | Iterable[Iterable[int]]) -> str | list[str]:
        """Token ids as text: a 1-d tensor or list of ids as one string, a 2-d tensor or a list of lists
        as one string per row."""
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        if ids and isinstance(ids[0], (list, tuple)) or (isinstance(tokens, torch.Tensor) and tokens.dim() == 2):
            return [self.to_string(row) for row in ids]
        vocab = self._require_tokenizer().get_vocab_size()
        try:  # ints, numpy integers and 0-d tensors; never floats or bools
            ids = [operator.index(i) if not isinstance(i, bool) else None for i in ids]
        except TypeError:
            ids = [None]
        bad = next((i for i in ids if i is None or not 0 <= i < vocab), "ok")
        if bad != "ok":
            raise ValueError(f"to_string: {bad!r} is not a token id of this model's tokenizer (whole numbers 0 to {vocab - 1})")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def to_str_tokens(self, tokens, prepend_eot: bool = False) -> list[str]:
        """Each token of `tokens` (text, or the ids of one sequence) as its own string."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens, prepend_eot)
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        if ids and isinstance(ids[0], list):
            if len(ids) != 1:
                raise ValueError("to_str_tokens takes one sequence: give one row")
            ids = ids[0]
        return [self.to_string([i]) for i in ids]

    def _as_tokens(self, tokens) -> torch.Tensor:
        """Ids (B, T) from ids (B, T) or (T,) (a tensor or lists of ints) or text, checked: whole
        numbers, at least one token, every id in the vocabulary; on the model's device."""
        if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
            return self.to_tokens(tokens)
        if isinstance(tokens, (list, tuple)):
            rows = tokens if tokens and isinstance(tokens[0], (list, tuple)) else [tokens]
            if not all(isinstance(row, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in row)
                       for row in rows) or len({len(row) for row in rows}) > 1:
                raise TypeError("tokens must be text, or token ids: a tensor or a list (of equal lists) of whole numbers")
            try:
                tokens = torch.tensor(tokens, dtype=torch.long, device=self.wte.weight.device)
            except (RuntimeError, OverflowError):
                raise ValueError("token ids must be whole numbers from 0 to the vocabulary's size") from None
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be text or a tensor of token ids, not {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be token ids of an integer dtype (torch.long), not {tokens.dtype}")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.numel() == 0:
            raise ValueError(f"tokens must have shape (T,) or (B, T) with B, T >= 1, not {tuple(tokens.shape)}")
        if torch.compiler.is_compiling():  # a compiled training step feeds its own batches: no graph break
            return tokens
        low, high = torch.stack(torch.aminmax(tokens)).tolist()  # one pass, one transfer from the device
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is not in the model's vocabulary (ids 0 to {self.config.vocab_size - 1})")
        return tokens.long().to(self.wte.weight.device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
