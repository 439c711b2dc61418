"""Edges of a circuit: the nonzero weights between kept nodes (docs/method.md section 3).

Within a block: act_in -> q/k/v (their projections), v -> attn.resid_delta (output projection),
q[j] <-> k[j] (a query and key channel of one head interact: one edge), mlp.act_in -> post_act
(fc), post_act -> mlp.resid_delta (proj). Across sublayers, on one residual channel: a
resid_delta -> every later act_in, the embedding -> every act_in, and a resid_delta -> the
unembedding. Residual edges carry the reading norm's gain as their weight.

The headline size of a circuit, as the paper counts it, is its weight edges (kind "weight"): a
nonzero weight between two kept nodes. The other kinds (residual identity links, q-k pairs, and the
channel-level embed, unembed and position links) follow from the node set alone (the embed and
unembed links from which channels the embedding and unembedding touch at all), nearly the same in a
sparse and a dense model, so they are reported beside the headline by kind (`edge_counts`), never in it.

The norm's scale (and LayerNorm's mean) is a statistic of the whole residual vector, not an
edge, as in the paper. With a ReLU or AbsTopK on the residual stream the stream is not linear:
a residual edge that passes one is marked `"through": "relu"`, `"abstopk"` or `"abstopk+relu"`.
With concatenated positions, the sublayer inputs' last d_pos channels are position channels: they
are read from the `position` node of the same index (kind "position"), not from the residual.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..model.gpt import SparseGPT

Node = dict  # {"site": str, "index": int}
EDGE_KINDS = ("weight", "residual", "qk", "embed", "unembed", "position")
HEADLINE_KIND = "weight"


def edge_counts(edges: list[dict]) -> dict[str, int]:
    """Edges by kind, every kind present (zero where none)."""
    counts = dict.fromkeys(EDGE_KINDS, 0)
    for edge in edges:
        counts[edge["kind"]] = counts.get(edge["kind"], 0) + 1
    return counts


def weight_edge_count(edges: list[dict]) -> int:
    """The headline size: nonzero weights between kept nodes."""
    return sum(edge["kind"] == HEADLINE_KIND for edge in edges)


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


def _residual_ops(model: SparseGPT, after: range) -> list[str]:
    """The nonlinearities on the residual stream at the points after these sublayers (0 = the first
    attention, 1 = the first MLP, ...): what an edge across them passes through."""
    ops = set()
    for t in after:
        if model.config.residual_activation != "identity":
            ops.add(model.config.residual_activation)
        if model.blocks[t // 2].residual_keep["after_attn" if t % 2 == 0 else "after_mlp"] < model.config.d_model:
            ops.add("abstopk")
    return sorted(ops)


@torch.no_grad()
def circuit_edges(model: SparseGPT, keep: Mapping[str, torch.Tensor]) -> list[dict]:
    keep = {site: k.bool().cpu() for site, k in keep.items()}
    d_model = model.config.d_model
    edges: list[dict] = []
    embed_live = (model.wte.weight != 0).any(0).cpu()
    position_live = None
    if model.config.concat_positions:
        position_live = (model.wpe.weight != 0).any(0).cpu()
    elif model.wpe is not None:
        embed_live |= (model.wpe.weight != 0).any(0).cpu()
    unembed_live = (model.unembedding_weight != 0).any(0).cpu()
    writes: list[tuple[str, int]] = []  # (resid_delta site, sublayer) of earlier sublayers

    def residual_edges(src: str, src_keep: torch.Tensor, src_sublayer: int, dst: str, dst_keep: torch.Tensor,
                       dst_sublayer: int, gain: torch.Tensor, kind: str) -> list[dict]:
        found = _channel_edges(src, src_keep, dst, dst_keep[:d_model], gain, kind)
        through = _residual_ops(model, range(max(src_sublayer, 0), dst_sublayer))
        for edge in found if through else ():
            edge["through"] = "+".join(through)
        return found

    for layer, block in enumerate(model.blocks):
        s = lambda kind: f"{layer}.{kind}"
        readers = (("attn.act_in", block.attn_norm, block.attn_pos_norm), ("mlp.act_in", block.mlp_norm, block.mlp_pos_norm))
        for sublayer, (reader, norm, pos_norm) in enumerate(readers, start=2 * layer):
            gain = norm.weight.detach().cpu()
            edges += residual_edges("embed", embed_live, -1, s(reader), keep[s(reader)], sublayer, gain, "embed")
            for write, written_at in writes:
                edges += residual_edges(write, keep[write], written_at, s(reader), keep[s(reader)], sublayer, gain, "residual")
            if pos_norm is not None:  # position channels: nodes of their own after the residual's
                position_keep = keep[s(reader)][d_model:]
                edges += [{"src": {"site": "position", "index": j}, "dst": {"site": s(reader), "index": d_model + j},
                           "weight": float(pos_norm.weight[j]), "kind": "position"}
                          for j in (position_live & position_keep).nonzero().flatten().tolist()]
            if reader == "attn.act_in":
                for kind, proj in (("attn.q", block.q_proj), ("attn.k", block.k_proj), ("attn.v", block.v_proj)):
                    edges += _matrix_edges(proj.weight, s(reader), keep[s(reader)], s(kind), keep[s(kind)])
                qk = (keep[s("attn.q")] & keep[s("attn.k")]).nonzero().flatten().tolist()
                edges += [{"src": {"site": s("attn.q"), "index": j}, "dst": {"site": s("attn.k"), "index": j},
                           "weight": 1.0, "kind": "qk"} for j in qk]
                edges += _matrix_edges(block.o_proj.weight, s("attn.v"), keep[s("attn.v")],
                                       s("attn.resid_delta"), keep[s("attn.resid_delta")])
                writes.append((s("attn.resid_delta"), sublayer))
            else:
                edges += _matrix_edges(block.fc.weight, s(reader), keep[s(reader)], s("mlp.post_act"), keep[s("mlp.post_act")])
                edges += _matrix_edges(block.proj.weight, s("mlp.post_act"), keep[s("mlp.post_act")],
                                       s("mlp.resid_delta"), keep[s("mlp.resid_delta")])
                writes.append((s("mlp.resid_delta"), sublayer))
    final_gain = model.final_norm.weight.detach().cpu()
    for write, written_at in writes:
        edges += residual_edges(write, keep[write], written_at, "unembed", unembed_live, 2 * len(model.blocks),
                                final_gain, "unembed")
    return edges
