"""Edge pruning after node pruning (docs/method.md section 3, "Edges").

Node pruning keeps whole nodes, so every nonzero weight between two kept nodes stays, needed or not
(the paper's limitation "pruning works on nodes rather than edges"). Here a second mask learns which
of those weight edges the task needs, with the node circuit fixed: a removed edge carries its source
node's mean instead of its activation (mean ablation per edge, the node means of node pruning). For a
linear map y = W x + b that is y = W' x + b' with W' = W where the edge is kept and 0 where removed,
and b' = b + (W - W') mean(x): the model runs its own forward pass with these weights in place. The
output projection reads the heads' mixed values; a removed edge there carries the value channel's
mean (what it would carry if the head attended to positions, not its sink, with every value at its mean).

The edge count is chosen as node pruning chooses its node count: the smallest number of edges, by
the mask's ranking, whose loss on the choose records meets the goal. Then the nodes left on no path
from the input to the answer are removed (`on_paths`), unless that misses the goal.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import SparseCircuitsError
from ..model.gpt import SparseGPT
from ..tasks.records import TaskSplits
from .find import CircuitEvaluator, PruneSettings, learn_mask, smallest_passing

# (source site, destination site, the linear map between them), per block
MATRICES = (("attn.act_in", "attn.q", "q_proj"), ("attn.act_in", "attn.k", "k_proj"), ("attn.act_in", "attn.v", "v_proj"),
            ("attn.v", "attn.resid_delta", "o_proj"), ("mlp.act_in", "mlp.post_act", "fc"),
            ("mlp.post_act", "mlp.resid_delta", "proj"))


class EdgeSet:
    """The weight edges between kept nodes, matrix by matrix: `candidates[name]` is the bool matrix of
    W's shape that marks them, `linear[name]` the layer, `source[name]` the source site."""

    def __init__(self, model: SparseGPT, keep: Mapping[str, torch.Tensor]):
        self.candidates: dict[str, torch.Tensor] = {}
        self.linear: dict[str, nn.Linear] = {}
        self.source: dict[str, str] = {}
        self.sites: dict[str, tuple[str, str]] = {}
        for layer, block in enumerate(model.blocks):
            for src, dst, attr in MATRICES:
                linear = getattr(block, attr)
                src_site, dst_site = f"{layer}.{src}", f"{layer}.{dst}"
                both = keep[dst_site].bool()[:, None] & keep[src_site].bool()[None, :].to(keep[dst_site].device)
                candidates = (linear.weight.detach() != 0) & both.to(linear.weight.device)
                if candidates.any():
                    name = f"blocks.{layer}.{attr}"
                    if linear.bias is None:
                        raise SparseCircuitsError("edge pruning moves a removed edge's mean into the layer's bias, and"
                                                  f" {name} has none (model.linear_bias = false): prune nodes only")
                    self.candidates[name], self.linear[name] = candidates, linear
                    self.source[name], self.sites[name] = src_site, (src_site, dst_site)

    def __len__(self) -> int:
        return int(sum(c.sum() for c in self.candidates.values()))

    def flat(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One vector of every candidate's value, matrix by matrix in a fixed order."""
        return torch.cat([values[name][self.candidates[name]] for name in self.candidates]) if self.candidates \
            else torch.zeros(0)

    def unflat(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, candidates in self.candidates.items():
            n = int(candidates.sum())
            matrix = torch.zeros(candidates.shape, dtype=vector.dtype, device=candidates.device)
            matrix[candidates] = vector[start:start + n].to(matrix.device)
            out[name], start = matrix, start + n
        return out

    def parameters(self, removed: Mapping[str, torch.Tensor], means: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{parameter name: value} with the edges `removed` (a 0..1 matrix per candidate matrix) carrying
        their source's mean: W' = W (1 - removed), b' = b + (W removed) mean."""
        params = {}
        for name, linear in self.linear.items():
            cut = linear.weight * removed[name]
            params[f"{name}.weight"] = linear.weight - cut
            params[f"{name}.bias"] = linear.bias + cut @ means[self.source[name]].to(cut)
        return params

    def between(self, kept: Mapping[str, torch.Tensor], nodes: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The `kept` edges (bool matrices) whose source and destination are both among `nodes`."""
        return {name: m & nodes[self.sites[name][1]].to(m.device)[:, None] & nodes[self.sites[name][0]].to(m.device)[None, :]
                for name, m in kept.items()}

    def edges(self, kept: Mapping[str, torch.Tensor]) -> list[dict]:
        """The kept weight edges as circuit.json writes them."""
        out = []
        for name, matrix in kept.items():
            src_site, dst_site = self.sites[name]
            weight = self.linear[name].weight.detach()
            for dst, src in matrix.nonzero().tolist():
                out.append({"src": {"site": src_site, "index": src}, "dst": {"site": dst_site, "index": dst},
                            "weight": float(weight[dst, src]), "kind": "weight"})
        return out


@contextlib.contextmanager
def edges_only(model: SparseGPT, edge_set: EdgeSet, kept: Mapping[str, torch.Tensor], means: Mapping[str, torch.Tensor]):
    """The model with only the `kept` candidate edges (bool matrices); the others carry their source's
    mean. The weights are changed in place for the block and restored after it."""
    removed = {name: (c & ~kept[name].bool()).float() for name, c in edge_set.candidates.items()}
    with torch.no_grad():
        new = edge_set.parameters(removed, means)
        params = dict(model.named_parameters())
        saved = {name: params[name].detach().clone() for name in new}
        try:
            for name, value in new.items():
                params[name].copy_(value)
            yield model
        finally:
            for name, value in saved.items():
                params[name].copy_(value)


class EdgeMask(nn.Module):
    """One learnable τ per candidate edge; the gate is H(τ) forward, sigmoid(τ / temperature)'s
    derivative backward (as NodeMask)."""

    def __init__(self, n: int, settings: PruneSettings, generator: torch.Generator):
        super().__init__()
        self.tau = nn.Parameter(settings.init_mean + settings.init_std * torch.randn(n, generator=generator))
        self.temperature = settings.temperature

    def gate(self) -> torch.Tensor:
        soft = torch.sigmoid(self.tau / self.temperature)
        return (self.tau > 0).to(self.tau.dtype) + (soft - soft.detach())

    @torch.no_grad()
    def clamp_(self) -> None:
        self.tau.clamp_(-1.0, 1.0)


def keep_top_edges(scores: torch.Tensor, n: int) -> torch.Tensor:
    keep = torch.zeros(len(scores), dtype=torch.bool)
    if n > 0:
        keep[scores.topk(min(n, len(scores))).indices] = True
    return keep


def on_paths(model: SparseGPT, keep: Mapping[str, torch.Tensor], edge_set: EdgeSet,
             kept: Mapping[str, torch.Tensor], from_input: bool = True) -> dict[str, torch.Tensor]:
    """The kept nodes on a path to the answer (and, with `from_input`, from the input) through the kept
    weight edges and the residual stream: a write reaches every later read of its channel, every read
    takes the embedding, every write reaches the unembedding. A head's query and key nodes reach the
    head's writes (its outputs, `attn.resid_delta` nodes with a nonzero output weight from the head)
    through its attention pattern, which moves them even when every value is at its mean."""
    sites = list(model.node_sites)
    order = {site: i for i, site in enumerate(sites)}
    d_model, d_head = model.config.d_model, model.config.d_head
    keep = {site: k.bool().cpu() for site, k in keep.items()}
    links: list[tuple[tuple[str, int], tuple[str, int]]] = []
    for name, matrix in kept.items():
        src_site, dst_site = edge_set.sites[name]
        links += [((src_site, s), (dst_site, d)) for d, s in matrix.nonzero().tolist()]
    writes = [s for s in sites if s.endswith("resid_delta")]
    reads = [s for s in sites if s.endswith("act_in")]
    for write in writes:
        for read in reads:
            if order[read] > order[write]:
                links += [((write, c), (read, c)) for c in (keep[write] & keep[read][:d_model]).nonzero().flatten().tolist()]
    for layer, block in enumerate(model.blocks):
        out = f"{layer}.attn.resid_delta"
        o_proj = block.o_proj.weight.detach().cpu() != 0
        for kind in ("attn.q", "attn.k"):
            for j in keep[f"{layer}.{kind}"].nonzero().flatten().tolist():
                head = slice(j // d_head * d_head, (j // d_head + 1) * d_head)
                links += [((f"{layer}.{kind}", j), (out, i)) for i in (keep[out] & o_proj[:, head].any(1)).nonzero().flatten().tolist()]
    nodes = {(site, i) for site, k in keep.items() for i in k.nonzero().flatten().tolist()}
    reach_answer = {n for n in nodes if n[0].endswith("resid_delta")}
    reach_input = {n for n in nodes if n[0].endswith("act_in")}
    for reached, step in ((reach_answer, lambda a, b: (b, a)), (reach_input, lambda a, b: (a, b))):
        grew = True
        while grew:
            grew = False
            for a, b in links:
                have, new = step(a, b)
                if have in reached and new in nodes and new not in reached:
                    reached.add(new)
                    grew = True
    on = reach_answer & reach_input if from_input else reach_answer
    return {site: torch.tensor([(site, i) in on for i in range(len(k))]) for site, k in keep.items()}


def find_edge_circuit(model: SparseGPT, splits: TaskSplits, means: Mapping[str, torch.Tensor],
                      keep: Mapping[str, torch.Tensor], settings: PruneSettings, show_progress: bool = True) -> dict:
    """The fewest weight edges of the node circuit `keep` whose loss on the choose records meets the goal
    (a mask over edges trained to it, as node pruning trains its mask), then the nodes on no path removed.
    Returns the kept nodes and edges and their losses on the choose and the test records."""
    started = time.perf_counter()
    edge_set = EdgeSet(model, keep)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    mask = EdgeMask(len(edge_set), settings, generator).to(device)
    node_hooks = CircuitEvaluator(model, splits, means).hooks(keep)
    params: dict[str, torch.Tensor] = {}

    def active() -> torch.Tensor:
        gate = mask.gate()
        params.update(edge_set.parameters({n: edge_set.candidates[n] * (1 - g) for n, g in edge_set.unflat(gate).items()}, means))
        return gate.sum()

    def final_logits(tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, (tokens,), {"at": last})

    if len(edge_set):
        with model.hooks(node_hooks):
            learn_mask(model, splits.train, mask, active, final_logits, settings, generator, show_progress)
    scores = mask.tau.detach().cpu()
    evaluator = CircuitEvaluator(model, splits, means)

    def loss_with(nodes: Mapping[str, torch.Tensor], kept: Mapping[str, torch.Tensor], split: str) -> float:
        with edges_only(model, edge_set, kept, means):
            return evaluator.loss(nodes, split)

    cache: dict[int, float] = {}

    def loss_at(n: int) -> float:
        if n not in cache:
            cache[n] = loss_with(keep, edge_set.unflat(keep_top_edges(scores, n)), "choose")
        return cache[n]

    n_edges = smallest_passing(loss_at, settings.goal, len(edge_set), also=(int((scores > 0).sum()),))
    reached = n_edges is not None
    if not reached:
        n_edges = min(cache, key=cache.get)
    kept = {name: m.bool() for name, m in edge_set.unflat(keep_top_edges(scores, n_edges)).items()}
    # nodes on no path go, unless that misses the goal: a node no kept edge feeds is a constant, not
    # always at its mean, and every node moves the norms; then only those reaching no answer go, or none
    for dropped, from_input in (("off every path from input to answer", True), ("reaching no answer", False), ("none", None)):
        nodes = on_paths(model, keep, edge_set, kept, from_input) if from_input is not None else dict(keep)
        on = edge_set.between(kept, nodes)
        loss_choose = loss_with(nodes, on, "choose")
        if from_input is None or loss_choose <= (cache[n_edges] if not reached else settings.goal):
            break
    return {"keep": nodes, "edges": edge_set.edges(on), "kept": on, "edge_set": edge_set, "reached": reached,
            "candidates": len(edge_set), "dropped_nodes": dropped, "loss_choose": loss_choose,
            "loss": loss_with(nodes, on, "test"), "seconds": round(time.perf_counter() - started, 1)}
