"""`sparsecircuits steer`: write a sparse node's change into the dense model through a bridge (paper A.4).

A node c at the input of sublayer i (`L.attn.act_in` or `L.mlp.act_in`, the normed read of the
residual at bridge site `L.resid_in` or `L.resid_mid`) changes by delta(t) = its value on a
counterfactual prompt minus its value on the presented prompt, at every token t. The change is
carried back through the sparse model's norm to its residual (x rms_sparse(t) / gain_sparse[c]),
through the bridge's decoder column c into the dense residual, and forward through the dense
model's norm to the same read (x gain_dense / rms_dense(t)): in all,

    steer(t) = strength * delta(t) * rms_sparse(t) / rms_dense(t) * gain_dense * W_dec[:, c] / gain_sparse[c]

added to the dense model's read at that site. Through an identity bridge between a model and
itself this is exactly patching the node to its counterfactual value.
"""

from __future__ import annotations

import json
import random
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SparseCircuitsError
from ..schemas import is_index
from ..io import atomic_write_text, output_folder
from ..model.gpt import Norm, SparseGPT
from ..rundir import Run, as_run, resolve_device
from ..tasks.records import task_records, tokenize_records
from .bridge import Bridges, load_bridged_run

READ_SITES = {"attn.act_in": ("resid_in", "attn_norm"), "mlp.act_in": ("resid_mid", "mlp_norm")}
DEFAULT_STRENGTHS = tuple(round(0.1 * i, 1) for i in range(11))


def parse_node(text: str, model: SparseGPT) -> tuple[str, int]:
    """'1.attn.act_in:12' -> ('1.attn.act_in', 12), checked against the model."""
    site, _, index = text.rpartition(":")
    layer, _, kind = site.partition(".")
    if kind not in READ_SITES or not is_index(layer) or not is_index(index):
        raise SparseCircuitsError(f"bad --node '{text}': give the input of a sublayer as SITE:INDEX, e.g. 1.attn.act_in:12"
                                  " or 0.mlp.act_in:40 (the bridges map the residual those sites read)")
    if int(layer) >= model.config.n_layer or int(index) >= model.config.d_model:
        raise SparseCircuitsError(f"--node '{text}' is outside the sparse model ({model.config.n_layer} layers,"
                                  f" {model.config.d_model} residual channels)")
    return site, int(index)


def _norm_scale(norm: Norm, x: torch.Tensor) -> torch.Tensor:
    """The divisor the norm applies at each token (RMS, or standard deviation for LayerNorm), (B, T, 1)."""
    centred = x - x.mean(-1, keepdim=True) if norm.layer_norm else x
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    return (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()


class Steering:
    """The change a sparse node's counterfactual makes in the dense model's read, for one batch of
    presented prompts and their counterfactual twins (same length)."""

    def __init__(self, sparse: SparseGPT, dense: SparseGPT, bridges: Bridges, node: tuple[str, int],
                 presented: torch.Tensor, counterfactual: torch.Tensor):
        site, index = node
        layer, kind = site.split(".", 1)
        residual_kind, norm_name = READ_SITES[kind]
        bridge_site = f"{layer}.{residual_kind}"
        with torch.no_grad():
            _, here = sparse.run_with_cache(presented, [site, bridge_site])
            _, there = sparse.run_with_cache(counterfactual, [site])
            _, dense_here = dense.run_with_cache(presented, [bridge_site])
        self.site, self.delta = site, there[site][..., index] - here[site][..., index]  # (B, T)
        sparse_norm, dense_norm = getattr(sparse.blocks[int(layer)], norm_name), getattr(dense.blocks[int(layer)], norm_name)
        gain = float(sparse_norm.weight[index])
        if abs(gain) < 1e-8:
            raise SparseCircuitsError(f"node {site}:{index} has a norm gain of zero: it carries nothing to steer with")
        column = bridges.decoders[bridges.index(bridge_site)].weight[:, index].detach()  # (d_dense,)
        scale = _norm_scale(sparse_norm, here[bridge_site]) / _norm_scale(dense_norm, dense_here[bridge_site])
        self.change = (self.delta[..., None] * scale) * (dense_norm.weight.detach() * column / gain)  # (B, T, d_dense)
        self.read_width = dense.site_widths[site]

    def random_direction(self, generator: torch.Generator) -> torch.Tensor:
        """The same norm at every token, in one random direction: the control for the direction."""
        direction = torch.randn(self.change.shape[-1], generator=generator).to(self.change.device)
        return self.change.norm(dim=-1, keepdim=True) * (direction / direction.norm())

    def hook(self, change: torch.Tensor, strength: float):
        pad = self.read_width - change.shape[-1]  # concatenated position channels are left alone

        def add(x: torch.Tensor, site: str) -> torch.Tensor:
            return x + strength * F.pad(change, (0, pad)).to(x.dtype)
        return add


@contextmanager
def steering(sparse: SparseGPT, dense: SparseGPT, bridges: Bridges, node: tuple[str, int], presented: torch.Tensor,
             counterfactual: torch.Tensor, strength: float = 1.0):
    """Context manager: the dense model, run on `presented`, steered by `strength` times the node's
    counterfactual change.

        with steering(sparse, dense, bridges, ("1.attn.act_in", 12), tokens, twin_tokens, 0.5):
            logits = dense(tokens)
    """
    steer = Steering(sparse, dense, bridges, node, presented, counterfactual)
    with dense.hooks({steer.site: steer.hook(steer.change, strength)}):
        yield steer


def twin_batches(task: str, tokenizer, split: str, limit: int | None, correct: str | None = None) -> list[tuple[torch.Tensor, ...]]:
    """(presented tokens, counterfactual tokens, correct id, incorrect id) per prompt length: each
    record with its twin (the other record of its pair: records come in pairs, as the built-in tasks
    write them), both tokenised to the same length; with `correct`, only the records whose correct
    completion is that text are presented."""
    name, splits = task_records(task)
    records = splits[split]
    if len(records) % 2:
        raise SparseCircuitsError(f"task {name} ({split}) has an odd number of records: steering reads them as pairs"
                                  " (each record and the next are twins with the answers swapped)")
    rows = []
    for first, second in zip(records[0::2], records[1::2]):
        pair = tokenize_records(name, split, [first, second], tokenizer, warn=False, min_records=0)
        if len(pair) == 2 and len(pair.prompts[0]) == len(pair.prompts[1]):
            for a, b in ((0, 1), (1, 0)):
                if correct is None or (first, second)[a]["correct"] == correct:
                    rows.append((pair.prompts[a], pair.prompts[b], int(pair.correct[a]), int(pair.incorrect[a])))
    if limit:
        rows = rows[:limit]
    if len(rows) < 8:
        only = f" and whose correct completion is {correct!r}" if correct is not None else ""
        raise SparseCircuitsError(f"task {name} ({split}) has {len(rows)} records whose twin tokenises to the same length"
                                  f" with single-token answers{only}; steering needs at least 8")
    by_length: dict[int, list] = {}
    for row in rows:
        by_length.setdefault(len(row[0]), []).append(row)
    return [(torch.tensor([r[0] for r in group]), torch.tensor([r[1] for r in group]),
             torch.tensor([r[2] for r in group]), torch.tensor([r[3] for r in group])) for group in by_length.values()]


def _log_odds(logits: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
    """(B,) on the CPU: the answer ids live there, the logits where the model runs."""
    last = logits[:, -1].float().cpu()
    return last.gather(-1, correct[:, None])[:, 0] - last.gather(-1, incorrect[:, None])[:, 0]


def bootstrap_interval(values: np.ndarray, seed: int, samples: int = 2000) -> tuple[float, float]:
    """95% interval of the mean, resampling records."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@torch.no_grad()
def steer_task(sparse: SparseGPT, dense: SparseGPT, bridges: Bridges, node: tuple[str, int], task: str,
               strengths=DEFAULT_STRENGTHS, split: str = "test", circuit_nodes: set[tuple[str, int]] | None = None,
               seed: int = 0, limit: int | None = None, correct: str | None = None) -> dict:
    """The dense model's log-odds (correct - incorrect) on each presented prompt, steered toward its
    twin by the node at each strength, beside two controls: the same change's norm in a random
    direction, and a random other node at the same site (outside `circuit_nodes` when given); and the
    sparse model's own log-odds with the node patched the same way (curve "sparse_model": what the
    bridge has to carry over)."""
    batches = twin_batches(task, sparse.tokenizer, split, limit, correct)
    site, index = node
    outside = [i for i in range(sparse.config.d_model) if i != index and (site, i) not in (circuit_nodes or set())]
    control_node = (site, random.Random(seed).choice(outside))
    generator = torch.Generator().manual_seed(seed)
    curves = {"node": [], "random_direction": [], "random_node": [], "sparse_model": []}
    for presented, counterfactual, correct_ids, incorrect_ids in batches:
        steer = Steering(sparse, dense, bridges, node, presented, counterfactual)
        other = Steering(sparse, dense, bridges, control_node, presented, counterfactual)
        changes = {"node": (steer, steer.change), "random_direction": (steer, steer.random_direction(generator)),
                   "random_node": (other, other.change)}
        for name, (owner, change) in changes.items():
            rows = []
            for strength in strengths:
                with dense.hooks({owner.site: owner.hook(change, strength)}):
                    rows.append(_log_odds(dense(presented), correct_ids, incorrect_ids))
            curves[name].append(torch.stack(rows, 1))  # (B, strengths)
        rows = []
        for strength in strengths:
            with sparse.hooks({site: patch_node(index, steer.delta, strength)}):
                rows.append(_log_odds(sparse(presented), correct_ids, incorrect_ids))
        curves["sparse_model"].append(torch.stack(rows, 1))
    result = {"node": f"{site}:{index}", "control_node": f"{control_node[0]}:{control_node[1]}", "task": task,
              "split": split, "correct": correct, "strengths": list(strengths), "records": sum(len(b[0]) for b in batches), "curves": {}}
    for name, parts in curves.items():
        odds = torch.cat(parts).numpy().astype(np.float64)
        shift = odds - odds[:, :1]
        result["curves"][name] = {
            "mean_log_odds": odds.mean(0).tolist(),
            "mean_shift": shift.mean(0).tolist(),
            "shift_interval": [bootstrap_interval(shift[:, j], seed + j) for j in range(len(strengths))],
        }
    node_shift, control_shift = result["curves"]["node"]["mean_shift"][-1], result["curves"]["random_direction"]["mean_shift"][-1]
    result["shift_ratio_to_random_direction"] = abs(node_shift) / max(abs(control_shift), 1e-12)
    steps = np.diff(result["curves"]["node"]["mean_shift"])
    result["monotonic"] = bool(np.all(steps <= 0) or np.all(steps >= 0))
    low, high = result["curves"]["node"]["shift_interval"][-1]
    result["effect"] = bool(low > 0 or high < 0)  # the interval at full strength excludes zero
    return result


def steer_headline(result: dict) -> str:
    """One line: the shift with its interval and the controls; a ratio to the random direction and the
    curve's shape only for an effect whose interval excludes zero (of no effect, both mean nothing)."""
    curve, control = result["curves"]["node"], result["curves"]["random_direction"]
    low, high = curve["shift_interval"][-1]
    verdict = (f"ratio to the random direction {result['shift_ratio_to_random_direction']:.1f};"
               f" {'monotonic' if result['monotonic'] else 'not monotonic'}" if result["effect"]
               else "no effect: the interval holds zero")
    return (f"{result['task']}: {result['records']} prompts; steering {result['node']} at strength {result['strengths'][-1]:g}"
            f" moves the dense model's log-odds by {curve['mean_shift'][-1]:+.3f} [{low:+.3f}, {high:+.3f}];"
            f" random direction {control['mean_shift'][-1]:+.3f}, random node {result['control_node']}"
            f" {result['curves']['random_node']['mean_shift'][-1]:+.3f}; the sparse model itself"
            f" {result['curves']['sparse_model']['mean_shift'][-1]:+.3f}; {verdict}")


def patch_node(index: int, delta: torch.Tensor, strength: float):
    """A hook for the sparse model itself: the node moved by `strength` times its counterfactual change."""
    def add(x: torch.Tensor, site: str) -> torch.Tensor:
        unit = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
        unit[index] = 1
        return x + strength * delta[..., None].to(x.dtype) * unit
    return add


@torch.no_grad()
def sparse_shifts(sparse: SparseGPT, task: str, nodes: list[tuple[str, int]], split: str = "choose",
                  correct: str | None = None) -> dict[tuple[str, int], float]:
    """Per node: the sparse model's mean log-odds change (negative: toward the twin's answer) when
    the node alone is patched to its value on the twin prompt."""
    sites = sorted({site for site, _ in nodes})
    totals, count = {node: 0.0 for node in nodes}, 0
    for presented, counterfactual, correct_ids, incorrect_ids in twin_batches(task, sparse.tokenizer, split, None, correct):
        logits, here = sparse.run_with_cache(presented, sites)
        _, there = sparse.run_with_cache(counterfactual, sites)
        unsteered = _log_odds(logits, correct_ids, incorrect_ids)
        for site, i in nodes:
            with sparse.hooks({site: patch_node(i, there[site][..., i] - here[site][..., i], 1.0)}):
                totals[(site, i)] += float((_log_odds(sparse(presented), correct_ids, incorrect_ids) - unsteered).sum())
        count += len(presented)
    return {node: total / count for node, total in totals.items()}


def pick_node(sparse: SparseGPT, task: str, circuit_nodes: set[tuple[str, int]], correct: str | None = None) -> tuple[str, int]:
    """The circuit's sublayer-input node whose counterfactual value moves the sparse model itself
    furthest toward the twins' answers (`sparse_shifts`), measured on the choose split (never the
    test records the figures come from)."""
    candidates = sorted((site, i) for site, i in circuit_nodes if site.split(".", 1)[1] in READ_SITES)
    if not candidates:
        raise SparseCircuitsError("the circuit has no node at a sublayer input (attn.act_in or mlp.act_in) to steer with:"
                                  " give --node")
    shifts = sparse_shifts(sparse, task, candidates, "choose", correct)
    return min(candidates, key=lambda node: shifts[node])


def plot(result: dict, path: Path) -> None:
    from ..plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    labels = {"node": f"node {result['node']}", "random_direction": "random direction, same norm",
              "random_node": f"random node {result['control_node']}",
              "sparse_model": "the sparse model itself, node patched"}
    for name, curve in result["curves"].items():
        low, high = zip(*curve["shift_interval"])
        ax.plot(result["strengths"], curve["mean_shift"], "o-", label=labels[name])
        ax.fill_between(result["strengths"], low, high, alpha=0.2)
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_xlabel("steering strength")
    ax.set_ylabel("change in log-odds (correct - incorrect)\nbelow 0: toward the twin's answer")
    ax.set_title(f"Steering the dense model on {result['task']}\n({result['records']} prompts, 95% bootstrap intervals)",
                 fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)


def run_steer(run: Run | str | Path, node: str, task: str, strengths=None, split: str = "test",
              circuit: str | Path | None = None, out: str | Path | None = None, seed: int = 0,
              limit: int | None = None, correct: str | None = None, device: str | torch.device = "cpu") -> dict:
    """`node` "auto": the circuit's sublayer-input node that, patched to its twin's value, moves the sparse
    model's own log-odds furthest toward the twin's answer (`pick_node`). `device`: where the models run
    ('cpu', 'cuda' or 'auto')."""
    from ..circuits.circuit import Circuit

    run = as_run(run)
    sparse, dense, bridges = load_bridged_run(run, resolve_device(device))
    if node == "auto" and circuit is None:
        raise SparseCircuitsError("--node auto picks a node of the task's circuit: give --circuit CIRCUIT_DIR")
    circuit_nodes = None
    if circuit is not None:
        loaded = Circuit.load(circuit)
        if loaded.data["model"].get("weights_sha256") != run.weights_sha256:
            raise SparseCircuitsError(f"{circuit} was pruned from another model than {run.path}'s sparse model: give a"
                                      " circuit of this run")
        circuit_nodes = {(n["site"], n["index"]) for n in loaded.nodes}
    parsed = pick_node(sparse, task, circuit_nodes, correct) if node == "auto" else parse_node(node, sparse)
    node = f"{parsed[0]}:{parsed[1]}"
    result = steer_task(sparse, dense, bridges, parsed, task, strengths or DEFAULT_STRENGTHS, split, circuit_nodes, seed,
                        limit, correct)
    result["circuit"] = str(circuit) if circuit else None
    out = output_folder(Path(out) if out else run.path / "steer" / f"{Path(task).stem}-{node.replace(':', '-')}")
    atomic_write_text(out / "steer.json", json.dumps(result, indent=1))
    plot(result, out / "steer.png")
    print(steer_headline(result))
    print(f"wrote {out / 'steer.json'} and {out / 'steer.png'}", file=sys.stderr)
    return result
