"""The paths that carry the answer: a circuit's logit difference split into paths through its nodes.

The quantity split is Δ, the mean over the test records of the logit difference (correct minus
incorrect answer) with the circuit kept, less the same with every one of its nodes at its mean (the
empty circuit): what the circuit's nodes add. It is split to first order, as attribution patching
splits a loss, at each record's own values:

- a node's effect T(n) = Σ (a_n - μ_n) ∂Δ/∂a_n over the records' positions;
- an edge's flow F(u -> v), the part of u's effect that passes through v: for a weight edge, the
  derivative of Δ with respect to the edge carrying its source's mean instead of its activation (as
  edge pruning removes one); for a residual link (a write to a later read of its channel, or a write
  to the answer) the write's deviation times the channel's own slope through the read's norm (the
  norm's scale moves every channel; that is not an edge) times the gradient at the read; for a head's query or key node, its deviation's effect on the head's outputs through the
  attention pattern (a central difference) times the gradient there;
- what enters at a node, S(n) = Σ_v F(n -> v) - Σ_u F(u -> n), its outflow less its kept inputs'
  flows: at a read of the residual stream (`act_in`), the tokens (embedding and positions); at any other
  node an offset: its bias, nodes at their means, and what a first-order split leaves over where
  inputs multiply (a head's query and key change its pattern, its values what the pattern moves: each
  flow counts their product once, so the head's output takes it back once, as a negative offset).

A path from what enters at n_0 through n_1 ... n_k to the answer carries S(n_0) times, at each node,
the share of the node's outflow that goes on to the next one. The paths together carry exactly the
writes' flows into the answer, Σ_w F(w -> answer), which is Δ to first order (exactly, for a linear
circuit); the report gives both, and each path's share of Δ. A node's effect T(n) (Σ (a - μ) ∂Δ/∂a)
is reported beside its outflow: they agree where the first-order split holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write_text, check_writable, directory_lock
from ..model.gpt import SparseGPT
from ..rundir import Run
from ..model.sites import residual_sites
from ..tasks.records import TokenizedTask, candidate_logits, pair_logits
from .circuit import Circuit, keep_from_nodes
from .edges import EdgeSet, edges_only
from .masks import ablation_hooks
from .workbench import Workbench, circuit_workbench

PATHS_FILE = "paths.json"
TOP_PATHS = 10
MAX_EXPANSIONS = 200_000  # path search steps: a larger circuit's weakest paths are left out (said in the result)
MIN_SHARE = 1e-4  # a partial path carrying less than this fraction of |Δ| is not followed further
STEP = 0.01  # the central difference's step, as a fraction of a query or key node's deviation


def norm_slope(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(..., width): ∂norm(x)_c / ∂x_c, each channel's own slope through the norm at x (the diagonal of
    its Jacobian: the gain over the scale, less what the channel adds to the scale itself)."""
    width = x.shape[-1]
    centred = x - x.mean(-1, keepdim=True) if norm.layer_norm else x
    variance = centred.pow(2).mean(-1, keepdim=True) + norm.eps
    own = centred.pow(2) / (width * variance) + (1.0 / width if norm.layer_norm else 0.0)
    return norm.weight * (1 - own) / variance.sqrt()


def _reads(model: SparseGPT) -> dict[str, tuple[str, nn.Module]]:
    """{act_in site: (the residual site it reads, its norm)}."""
    reads = {}
    for layer, block in enumerate(model.blocks):
        reads[f"{layer}.attn.act_in"] = (f"{layer}.resid_in", block.attn_norm)
        reads[f"{layer}.mlp.act_in"] = (f"{layer}.resid_mid", block.mlp_norm)
    return reads


class _Flows:
    """Sums over the records of every node's effect and every link's flow."""

    def __init__(self, model: SparseGPT, keep: Mapping[str, torch.Tensor], means: Mapping[str, torch.Tensor]):
        self.model, self.means = model, means
        self.keep = {site: k.bool().cpu() for site, k in keep.items()}
        self.order = {site: i for i, site in enumerate(model.node_sites)}
        self.effect = {site: torch.zeros(len(k), dtype=torch.float64) for site, k in self.keep.items()}
        self.links: dict[tuple[tuple[str, int], tuple[str, int] | str], float] = {}
        self.delta = self.n = 0.0
        self.edge_set = EdgeSet(model, keep)
        self.d_model = model.config.d_model

    def add(self, src, dst, value: float) -> None:
        self.links[(src, dst)] = self.links.get((src, dst), 0.0) + value

    def batch(self, tokens: torch.Tensor, last: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> None:
        model, keep, means = self.model, self.keep, self.means
        device = next(model.parameters()).device
        tokens, last, correct, incorrect = (t.to(device) for t in (tokens, last, correct, incorrect))
        rows = torch.arange(len(tokens), device=device)
        values: dict[str, torch.Tensor] = {}

        def record(x: torch.Tensor, site: str) -> torch.Tensor:
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            if not x.is_leaf:
                x.retain_grad()
            values[site] = x
            return x

        removed = {name: torch.zeros_like(c, dtype=torch.float32, requires_grad=True)
                   for name, c in self.edge_set.candidates.items()}
        params = self.edge_set.parameters(removed, means)
        recorded = [*keep, *residual_sites(model.config.n_layer)]
        with model.hooks(ablation_hooks(model, keep, means)), model.hooks({s: record for s in recorded}):
            logits = torch.func.functional_call(model, params, (tokens,), {"at": last})
        pair = candidate_logits(logits, correct, incorrect)
        diff = pair[:, 0] - pair[:, 1]
        diff.sum().backward()
        with torch.no_grad():
            self.delta += float(diff.sum())
            self.n += len(tokens)
            deviation = {s: values[s] - means[s].to(values[s]) for s in keep}
            for site, k in keep.items():
                if k.any():
                    self.effect[site] += (deviation[site] * values[site].grad).sum((0, 1)).double().cpu() * k
            for name, c in self.edge_set.candidates.items():
                src_site, dst_site = self.edge_set.sites[name]
                flow = -removed[name].grad.cpu()
                for d, s in c.nonzero().tolist():
                    self.add((src_site, s), (dst_site, d), float(flow[d, s]))
            writes = [s for s in keep if s.endswith("resid_delta") and keep[s].any()]
            for read, (resid_site, norm) in _reads(model).items():
                read_channels = keep[read][:self.d_model]
                if not read_channels.any():
                    continue
                x = values[read]
                slope = norm_slope(norm, values[resid_site])  # (B, T, d_model)
                through = x.grad[..., :self.d_model] * (x[..., :self.d_model] != 0) * slope
                for write in writes:
                    if self.order[read] <= self.order[write]:
                        continue
                    channels = (keep[write] & read_channels).nonzero().flatten().tolist()
                    if channels:
                        flow = (deviation[write][..., channels] * through[..., channels]).sum((0, 1))
                        for c, f in zip(channels, flow.tolist()):
                            self.add((write, c), (read, c), f)
            final = values["final_resid"][rows, last]
            w_u = model.unembedding_weight
            answer = norm_slope(model.final_norm, final) * (w_u[correct] - w_u[incorrect])
            for write in writes:
                channels = keep[write].nonzero().flatten().tolist()
                flow = (deviation[write][rows, last][:, channels] * answer[:, channels]).sum(0)
                for c, f in zip(channels, flow.tolist()):
                    self.add((write, c), "answer", f)
            self._pattern_flows(tokens, last, values)

    @torch.no_grad()
    def _pattern_flows(self, tokens: torch.Tensor, last: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        """A head's query and key nodes reach its outputs through the attention pattern alone."""
        model, keep, means = self.model, self.keep, self.means
        d_head = model.config.d_head
        for layer, block in enumerate(model.blocks):
            out = f"{layer}.attn.resid_delta"
            outputs = keep[out].nonzero().flatten()
            if not len(outputs):
                continue
            grad_out = values[out].grad[..., outputs]
            o_proj = block.o_proj.weight.detach().cpu() != 0
            for part in ("q", "k"):
                site = f"{layer}.attn.{part}"
                for j in keep[site].nonzero().flatten().tolist():
                    head = slice(j // d_head * d_head, (j // d_head + 1) * d_head)
                    reached = o_proj[outputs.cpu(), head].any(1)
                    if not reached.any():
                        continue
                    moved = []
                    for sign in (1.0, -1.0):
                        def nudge(x: torch.Tensor, _site: str, j=j, sign=sign) -> torch.Tensor:
                            x = x.clone()
                            mean = means[_site][j].to(x)
                            x[..., j] = mean + (1 + sign * STEP) * (x[..., j] - mean)
                            return x
                        seen = {}
                        with model.hooks(ablation_hooks(model, keep, means)), model.hooks({site: nudge}), \
                                model.hooks({out: lambda x, s: seen.__setitem__("x", x)}):
                            model(tokens, at=last)
                        moved.append(seen["x"][..., outputs])
                    flow = ((moved[0] - moved[1]) / (2 * STEP) * grad_out).sum((0, 1)).cpu()
                    for i, f, r in zip(outputs.tolist(), flow.tolist(), reached.tolist()):
                        if r:
                            self.add((site, j), (out, i), f)


def answer_paths(model: SparseGPT, task: TokenizedTask, means: Mapping[str, torch.Tensor],
                 keep: Mapping[str, torch.Tensor], top: int = TOP_PATHS) -> dict:
    """The circuit `keep`'s logit difference on `task`'s records split into paths (module docstring):
    {"delta": Δ, "logit_diff": with the circuit, "logit_diff_empty": every node at its mean,
    "paths_sum": what all paths carry together (Δ to first order), "paths": the `top` that carry most
    toward Δ, "against": the `top` that carry most against it, each {"nodes": [start, node, ..., "answer"]
    (start "tokens" or "offset", module docstring), "flow", "share" of Δ}, "top3_share": the top 3's
    share of Δ, "n_paths", "unfollowed": the |flow| of partial paths too weak to follow (below MIN_SHARE
    of |Δ|, or past MAX_EXPANSIONS steps of the search), "nodes": each node's effect, outflow and what
    enters there}."""
    model.requires_grad_(False)
    flows = _Flows(model, keep, means)
    with torch.enable_grad():  # also inside `edges_only`, which runs its block without gradients
        for group in task.width_groups():
            flows.batch(*task.batch(group))
    n = flows.n
    effect = {(site, i): float(v[i]) / n for site, v in flows.effect.items() for i in flows.keep[site].nonzero().flatten().tolist()}
    out: dict[tuple[str, int], list[tuple[object, float]]] = {node: [] for node in effect}
    inflow = dict.fromkeys(effect, 0.0)
    for (src, dst), f in flows.links.items():
        out[src].append((dst, f / n))
        if dst != "answer":
            inflow[dst] += f / n
    outflow = {node: sum(f for _, f in edges) for node, edges in out.items()}
    source = {node: outflow[node] - inflow[node] for node in effect}
    logit_diff = flows.delta / n
    none = {site: torch.zeros_like(k) for site, k in keep.items()}
    empty_pairs = pair_logits(model, task, ablation_hooks(model, none, means))  # every node at its mean
    empty = float((empty_pairs[:, 0] - empty_pairs[:, 1]).mean())
    delta = logit_diff - empty
    floor = MIN_SHARE * max(abs(delta), 1e-12)
    found: list[tuple[float, list]] = []
    expansions, unfollowed = 0, 0.0
    name = lambda node: f"{node[0]}:{node[1]}"

    def walk(node, carried: float, path: list) -> None:
        nonlocal expansions, unfollowed
        expansions += 1
        if expansions > MAX_EXPANSIONS or abs(outflow[node]) < 1e-12:
            unfollowed += abs(carried)
            return
        for nxt, f in out[node]:
            share = carried * f / outflow[node]
            if nxt == "answer":
                found.append((share, [*path, "answer"]))
            elif abs(share) >= floor:
                walk(nxt, share, [*path, name(nxt)])
            else:
                unfollowed += abs(share)

    for node in sorted(effect, key=lambda n: -abs(source[n])):
        if abs(source[node]) >= floor:
            walk(node, source[node], ["tokens" if node[0].endswith("act_in") else "offset", name(node)])
        else:
            unfollowed += abs(source[node])
    direction = 1.0 if delta >= 0 else -1.0
    found.sort(key=lambda p: -p[0] * direction)
    share = lambda f: f / delta if delta else 0.0
    listed = lambda paths: [{"nodes": nodes, "flow": flow, "share": share(flow)} for flow, nodes in paths]
    return {"delta": delta, "logit_diff": logit_diff, "logit_diff_empty": empty, "paths_sum": sum(f for f, _ in found),
            "paths": listed(found[:top]), "against": listed([p for p in found[::-1][:top] if p[0] * direction < 0]),
            "top3_share": share(sum(flow for flow, _ in found[:3])), "n_paths": len(found), "unfollowed": unfollowed,
            "nodes": {name(node): {"effect": effect[node], "outflow": outflow[node], "enters": source[node]} for node in effect}}


def format_paths(result: dict, labels: Mapping[str, str] | None = None, top: int = 5) -> str:
    """The top paths, one per line, with their share of Δ and each node's label."""
    labels = labels or {}
    lines = [f"logit difference {result['logit_diff']:.3f} with the circuit, {result['logit_diff_empty']:.3f} with every"
             f" node at its mean: Δ {result['delta']:.3f}; {result['n_paths']} paths carry {result['paths_sum']:.3f}"
             f" together; the top 3 carry {result['top3_share']:.0%} of Δ"]
    for path in result["paths"][:top]:
        lines.append(f"  {path['share']:+.0%}  " + path_text(path, labels))
    if result["against"]:
        lines.append(f"  against: {result['against'][0]['share']:+.0%}  " + path_text(result["against"][0], labels))
    return "\n".join(lines)


def path_text(path: dict, labels: Mapping[str, str] | None = None) -> str:
    labels = labels or {}
    return " -> ".join(f"{n} ({labels[n]})" if labels.get(n) else n for n in path["nodes"])


def kept_edges(edge_set: EdgeSet, edges: list[dict]) -> dict[str, torch.Tensor]:
    """The bool matrices of `edge_set` that mark `edges` (circuit.json's weight edges)."""
    kept = {name: torch.zeros_like(c) for name, c in edge_set.candidates.items()}
    by_sites = {sites: name for name, sites in edge_set.sites.items()}
    for edge in edges:
        name = by_sites.get((edge["src"]["site"], edge["dst"]["site"]))
        if edge["kind"] == "weight" and name is not None:
            kept[name][edge["dst"]["index"], edge["src"]["index"]] = True
    return kept


def circuit_paths(model: SparseGPT, task: TokenizedTask, means: Mapping[str, torch.Tensor], circuit_data: dict) -> dict:
    """{"node": the paths of the node circuit, "edge": those of its edge circuit (`prune --edges`) or None}."""
    keep = keep_from_nodes(model, circuit_data["nodes"])
    result = {"node": answer_paths(model, task, means, keep), "edge": None}
    edge_circuit = circuit_data.get("edge_circuit")
    if edge_circuit:
        edge_set = EdgeSet(model, keep)
        with edges_only(model, edge_set, kept_edges(edge_set, edge_circuit["edges"]), means):
            result["edge"] = answer_paths(model, task, means, keep_from_nodes(model, edge_circuit["nodes"]))
    return result


def paths(circuit_dir: str | Path, run: Workbench | Run | str | Path | None = None, task: str | Path | None = None,
          show_progress: bool = True, device: str = "cpu") -> dict:
    """The paths that carry the answer in a circuit directory (its node circuit, and its edge circuit when
    pruned with --edges), on its task's test records; written to CIRCUIT_DIR/paths.json. `device`: where
    the model runs ('cpu', 'cuda' or 'auto'), unless `run` is a workbench."""
    circuit = Circuit.load(circuit_dir)
    check_writable(Path(circuit_dir) / PATHS_FILE, "CIRCUIT_DIR")
    bench = circuit_workbench(circuit, run, device)
    with directory_lock(Path(circuit_dir)):
        means = bench.means(circuit.data["ablation"], circuit.means_data, show_progress)
        result = circuit_paths(bench.model, bench.splits(circuit.task_source(task)).test, means, circuit.data)
        return write_paths(circuit_dir, circuit.task, result)


def write_paths(circuit_dir: str | Path, task: str, result: dict) -> dict:
    """CIRCUIT_DIR/paths.json: the task and `circuit_paths`'s result (the caller holds the folder's lock)."""
    data = {"task": task, **result}
    atomic_write_text(Path(circuit_dir) / PATHS_FILE, json.dumps(data, indent=1))
    return data
