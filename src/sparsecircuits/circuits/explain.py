"""What a node responds to in real text: its top and bottom activating contexts and a histogram.

Everything here returns plain dicts and lists (JSON-ready), for the viewer, the terminal and notebooks:

    examples = node_examples(model, data, ["0.mlp.post_act:12"])
    examples["0.mlp.post_act:12"]["top"][0]  # {"tokens": [...], "acts": [...], "focus": 12, "value": 3.1}
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.dataset import TokenData
from ..errors import SparseCircuitsError
from ..schemas import is_index
from ..model.gpt import SparseGPT


def parse_node(name: str, model: SparseGPT) -> tuple[str, int]:
    """'0.mlp.post_act:12' -> ('0.mlp.post_act', 12), checked against the model."""
    site, _, index = name.rpartition(":")
    if not site or not is_index(index):
        raise SparseCircuitsError(f"bad node '{name}': write it as SITE:INDEX, e.g. 0.mlp.post_act:12")
    widths = model.site_widths
    if site not in widths:
        raise SparseCircuitsError(f"site '{site}' does not exist in this model (sites look like 0.attn.q,"
                                  f" {model.config.n_layer - 1}.mlp.post_act, 0.resid_in, final_resid)")
    if int(index) >= widths[site]:
        raise SparseCircuitsError(f"node {name} does not exist: {site} has {widths[site]} channels")
    return site, int(index)


@torch.no_grad()
def record_nodes(model: SparseGPT, data: TokenData, nodes: list[tuple[str, int]], n_tokens: int = 32768,
                 batch_size: int = 16, show_progress: bool = True) -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray]]:
    """Token windows of validation text (N, T) and each node's activation on them (N, T)."""
    ctx = model.config.ctx_len
    inputs, _ = data.eval_windows("val", ctx, n_tokens)
    by_site: dict[str, list[int]] = {}
    for site, index in nodes:
        by_site.setdefault(site, []).append(index)
    chunks: dict[str, list[torch.Tensor]] = {site: [] for site in by_site}

    def grab(x: torch.Tensor, site: str) -> None:
        chunks[site].append(x[..., by_site[site]].float().cpu())

    device = next(model.parameters()).device
    with model.hooks({site: grab for site in by_site}):
        for start in tqdm(range(0, len(inputs), batch_size), desc="node activations", unit="batch",
                          disable=not show_progress, file=sys.stderr):
            model(inputs[start : start + batch_size].to(device))
    acts = {}
    for site, indices in by_site.items():
        stacked = torch.cat(chunks[site]).numpy()  # (N, T, len(indices))
        for column, index in enumerate(indices):
            acts[(site, index)] = stacked[..., column]
    return inputs.numpy(), acts


def _pick_spread(order: np.ndarray, width: int, count: int, gap: int = 4) -> list[tuple[int, int]]:
    """The first `count` positions of `order` (flat indices) that are not within `gap` tokens of one already taken."""
    taken: list[tuple[int, int]] = []
    for flat in order:
        row, col = divmod(int(flat), width)
        if all(r != row or abs(c - col) > gap for r, c in taken):
            taken.append((row, col))
            if len(taken) == count:
                break
    return taken


def node_examples(model: SparseGPT, data: TokenData, node_names: list[str] | None = None,
                  nodes: list[tuple[str, int]] | None = None, n_tokens: int = 32768, top: int = 8, before: int = 12,
                  after: int = 3, bins: int = 24, show_progress: bool = True) -> dict[str, dict]:
    """For each node: top and bottom activating contexts, with every token's activation, and a histogram."""
    if nodes is None:
        nodes = [parse_node(name, model) for name in node_names or []]
    tokens, acts = record_nodes(model, data, nodes, n_tokens, show_progress=show_progress)
    tokenizer = model.tokenizer
    vocab = {}

    def text(token_id: int) -> str:
        if token_id not in vocab:
            vocab[token_id] = tokenizer.decode([token_id], skip_special_tokens=False)
        return vocab[token_id]

    def context(values: np.ndarray, row: int, col: int) -> dict:
        lo, hi = max(0, col - before), min(tokens.shape[1], col + after + 1)
        return {"tokens": [text(int(t)) for t in tokens[row, lo:hi]], "acts": [round(float(a), 3) for a in values[row, lo:hi]],
                "focus": col - lo, "value": round(float(values[row, col]), 4)}

    out = {}
    for site, index in nodes:
        values = acts[(site, index)]
        flat = values.ravel()
        width = values.shape[1]
        top_positions = _pick_spread(np.argsort(-flat, kind="stable"), width, top)
        bottom_positions = _pick_spread(np.argsort(flat, kind="stable"), width, top)
        counts, edges = np.histogram(flat, bins=bins)
        out[f"{site}:{index}"] = {
            "site": site, "index": index,
            "top": [context(values, r, c) for r, c in top_positions if values[r, c] > 0],
            "bottom": [context(values, r, c) for r, c in bottom_positions if values[r, c] < 0],
            "histogram": {"counts": counts.tolist(), "edges": [round(float(e), 4) for e in edges]},
            "fraction_nonzero": round(float((flat != 0).mean()), 4),
            "mean": round(float(flat.mean()), 4),
            "tokens_seen": int(flat.size),
        }
    return out


def format_contexts(example: dict, color: bool = True) -> str:
    """Terminal rendering: each token shaded by the node's activation, the focus token marked."""
    lines = []
    for title, key in (("top activations", "top"), ("bottom activations", "bottom")):
        lines.append(f"{title}:")
        scale = max([abs(c["value"]) for c in example[key]] + [1e-9])
        for ctx in example[key]:
            parts = []
            for i, (token, act) in enumerate(zip(ctx["tokens"], ctx["acts"])):
                shown = token.replace("\n", "\\n")
                if color:
                    strength = min(1.0, abs(act) / scale)
                    r, g, b = (255, int(255 * (1 - strength)), int(255 * (1 - strength))) if act < 0 else \
                              (int(255 * (1 - strength)), 255, int(255 * (1 - strength)))
                    shown = f"\x1b[48;2;{r};{g};{b}m\x1b[30m{shown}\x1b[0m" if act != 0 else shown
                    if i == ctx["focus"]:
                        shown = f"\x1b[4m{shown}\x1b[24m"
                elif i == ctx["focus"]:
                    shown = f"[[{shown}]]"
                parts.append(shown)
            lines.append(f"  {ctx['value']:+8.3f}  {''.join(parts)}")
        if not example[key]:
            lines.append("  (none)")
    h = example["histogram"]
    lines.append(f"fraction of tokens where it is nonzero: {example['fraction_nonzero']:.3f}; mean {example['mean']:+.4f};"
                 f" range [{h['edges'][0]:+.3f}, {h['edges'][-1]:+.3f}] over {example['tokens_seen']:,} tokens")
    return "\n".join(lines)
