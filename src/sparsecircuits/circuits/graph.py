"""Edges of a circuit: the nonzero weights between kept nodes (METHOD.md section 3).

Within a block: act_in -> q/k/v (their projections), v -> attn.resid_delta (output projection),
q[j] <-> k[j] (a query and key channel of one head interact: one edge), mlp.act_in -> post_act
(fc), post_act -> mlp.resid_delta (proj). Across sublayers, on one residual channel: a
resid_delta -> every later act_in, the embedding -> every act_in, and a resid_delta -> the
unembedding. Residual edges carry the reading norm's gain as their weight.

The norm's scale (and LayerNorm's mean) is a statistic of the whole residual vector, not an
edge, as in the paper. With `model.residual_activation = "relu"` the residual stream is not
linear: every residual edge that passes a ReLU (all but embedding -> the first attention) is
marked `"through": "relu"`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..model.gpt import SparseGPT

Node = dict  # {"site": str, "index": int}


def _matrix_edges(weight: torch.Tensor, src_site: str, src_keep: torch.Tensor, dst_site: str,
                  dst_keep: torch.Tensor, kind: str = "weight") -> list[dict]:
    """Edges for nonzero W[dst, src] with both ends kept."""
    src_idx = src_keep.nonzero().flatten()
    dst_idx = dst_keep.nonzero().flatten()
    block = weight.detach()[dst_idx][:, src_idx]
    rows, cols = block.nonzero(as_tuple=True)
    return [{"src": {"site": src_site, "index": int(src_idx[c])}, "dst": {"site": dst_site, "index": int(dst_idx[r])},
             "weight": float(block[r, c]), "kind": kind} for r, c in zip(rows.tolist(), cols.tolist())]


def _channel_edges(src_site: str, src_keep: torch.Tensor, dst_site: str, dst_keep: torch.Tensor,
                   gain: torch.Tensor, kind: str) -> list[dict]:
    """Edges between the same channel of two sites where both are kept."""
    both = (src_keep & dst_keep).nonzero().flatten().tolist()
    return [{"src": {"site": src_site, "index": c}, "dst": {"site": dst_site, "index": c},
             "weight": float(gain[c]), "kind": kind} for c in both]


@torch.no_grad()
def circuit_edges(model: SparseGPT, keep: Mapping[str, torch.Tensor]) -> list[dict]:
    keep = {site: k.bool().cpu() for site, k in keep.items()}
    edges: list[dict] = []
    embed_live = (model.wte.weight != 0).any(0).cpu()
    if model.wpe is not None:
        embed_live |= (model.wpe.weight != 0).any(0).cpu()
    unembed_live = (model.unembedding_weight != 0).any(0).cpu()
    writes: list[str] = []  # resid_delta sites of earlier sublayers
    for layer, block in enumerate(model.blocks):
        s = lambda kind: f"{layer}.{kind}"
        for reader, norm in (("attn.act_in", block.attn_norm), ("mlp.act_in", block.mlp_norm)):
            gain = norm.weight.detach().cpu()
            edges += _channel_edges("embed", embed_live, s(reader), keep[s(reader)], gain, "embed")
            for write in writes:
                edges += _channel_edges(write, keep[write], s(reader), keep[s(reader)], gain, "residual")
            if reader == "attn.act_in":
                for kind, proj in (("attn.q", block.q_proj), ("attn.k", block.k_proj), ("attn.v", block.v_proj)):
                    edges += _matrix_edges(proj.weight, s(reader), keep[s(reader)], s(kind), keep[s(kind)])
                qk = (keep[s("attn.q")] & keep[s("attn.k")]).nonzero().flatten().tolist()
                edges += [{"src": {"site": s("attn.q"), "index": j}, "dst": {"site": s("attn.k"), "index": j},
                           "weight": 1.0, "kind": "qk"} for j in qk]
                edges += _matrix_edges(block.o_proj.weight, s("attn.v"), keep[s("attn.v")],
                                       s("attn.resid_delta"), keep[s("attn.resid_delta")])
                writes.append(s("attn.resid_delta"))
            else:
                edges += _matrix_edges(block.fc.weight, s(reader), keep[s(reader)], s("mlp.post_act"), keep[s("mlp.post_act")])
                edges += _matrix_edges(block.proj.weight, s("mlp.post_act"), keep[s("mlp.post_act")],
                                       s("mlp.resid_delta"), keep[s("mlp.resid_delta")])
                writes.append(s("mlp.resid_delta"))
    final_gain = model.final_norm.weight.detach().cpu()
    for write in writes:
        edges += _channel_edges(write, keep[write], "unembed", unembed_live, final_gain, "unembed")
    if model.config.residual_activation != "identity":
        for edge in edges:
            crosses = edge["kind"] in ("residual", "unembed") or (edge["kind"] == "embed" and edge["dst"]["site"] != "0.attn.act_in")
            if crosses:
                edge["through"] = model.config.residual_activation
    return edges
