"""Label nodes with the Python concepts that best explain their activations on validation text.

For every node and concept, over the validation tokens where every concept is known:

- a binary concept scores the AUROC of the node's activation in its own direction (the sign that
  carries most of its activation mass: AbsTopK nodes fire either way) — does it fire more on the
  tokens where the concept holds than on the others? — and the fraction of the node's activation
  mass (sum of |a|) on tokens where it holds; its strength is 2·AUROC − 1, floored at 0 (a node is
  labelled by what it fires *on*; sign − says it fires negatively there);
- a numeric concept (a depth, an indentation) scores the Pearson correlation r; strength |r|, and
  its sign says which way.

A binary concept that holds on fewer than MIN_POSITIVES of the tokens read (or fails on fewer) is
not scored: read more tokens to label by it.

The top concepts by strength are the node's labels; below `threshold` the node gets "no concept
above threshold". The same nodes of a copy of the model whose nonzero weights are shuffled within
each matrix (same sparsity pattern) give the baseline: the best strength any concept reaches there
is what choosing the best of many concepts finds by chance, and a label not above it is flagged.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..concepts import PYTHON_CONCEPTS, Concept, SourceFacts, token_values
from .. import schemas
from ..config import SparsityConfig
from ..data.dataset import TokenData
from ..errors import SparseCircuitsError
from ..model.gpt import SparseGPT
from ..model.sparsity import sparse_parameters
from ..schemas import PARSE_ERRORS, file_problem, problem

DEFAULT_THRESHOLD = 0.6  # AUROC 0.8, or |r| 0.6
NODE_CHUNK = 512  # nodes scored at once (bounds the memory of the rank tensors)
MIN_TOKENS = 100  # a concept known on fewer validation tokens is not scored
# A binary concept is scored only where it holds on at least this many tokens and fails on as many:
# on a handful of tokens (`after is` may hold on 6 of 16,384) an AUROC near 1 is luck.
MIN_POSITIVES = 30


@dataclass
class ConceptTable:
    """Validation windows and the concept values of their tokens."""

    inputs: torch.Tensor  # (windows, ctx_len) token ids
    values: np.ndarray  # (windows * ctx_len, concepts), NaN where unknown
    concepts: list[Concept]

    def known_groups(self) -> list[tuple[np.ndarray, list[int]]]:
        """(tokens, concept columns) for each set of concepts known on the same tokens: a concept is
        scored on the tokens where it is known (text that does not parse leaves the grammar's unknown)."""
        known = ~np.isnan(self.values)
        groups: dict[bytes, list[int]] = {}
        for c in range(known.shape[1]):
            groups.setdefault(np.packbits(known[:, c]).tobytes(), []).append(c)
        return [(known[:, columns[0]], columns) for columns in groups.values()]


@lru_cache(maxsize=4)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte (our tokenizers and the authors' use it)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes every token id stands for (special tokens: none)."""
    decoder = _byte_decoder()
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    out = []
    for token_id in range(tokenizer.get_vocab_size()):
        token = tokenizer.id_to_token(token_id)
        if token is None or token in special:
            out.append(b"")
        elif all(ch in decoder for ch in token):
            out.append(bytes(decoder[ch] for ch in token))
        else:
            raise SparseCircuitsError("labels need a byte-level BPE tokenizer (the kind `prepare` trains): token"
                                      f" {token!r} is not in GPT-2's byte alphabet")
    return out


def document_concepts(ids: np.ndarray, pieces: list[bytes], concepts: Sequence[Concept]) -> np.ndarray:
    """(len(ids), concepts) values of one document's tokens, computed on its decoded text."""
    data = [pieces[i] for i in ids]
    raw = b"".join(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return np.full((len(ids), len(concepts)), np.nan, dtype=np.float32)
    char_starts = np.cumsum([0] + [len(ch.encode("utf-8")) for ch in text]) if not text.isascii() else None
    byte_ends = np.cumsum([len(d) for d in data])
    byte_starts = byte_ends - np.array([len(d) for d in data])
    to_char = (lambda b: np.searchsorted(char_starts, b, side="left")) if char_starts is not None else (lambda b: b)
    offsets = list(zip(to_char(byte_starts).tolist(), to_char(byte_ends).tolist()))
    return token_values(text, offsets, concepts, SourceFacts(text))


def concept_table(data: TokenData, tokenizer, ctx_len: int, n_tokens: int, concepts: Sequence[Concept],
                  show_progress: bool = True) -> ConceptTable:
    """The evaluation windows of the validation split and their tokens' concepts, each computed on
    the whole document the token belongs to (a window that starts mid-file still knows the file)."""
    stream = np.asarray(data.splits["val"])
    starts = data.eval_window_starts("val", ctx_len, n_tokens)
    inputs, _ = data.eval_windows("val", ctx_len, n_tokens)
    boundaries = np.flatnonzero(stream == data.eot_id)
    pieces = token_bytes(tokenizer)
    values = np.full((len(starts), ctx_len, len(concepts)), np.nan, dtype=np.float32)
    cache: dict[int, np.ndarray] = {}
    for w, start in enumerate(tqdm(starts, desc="concepts", unit="window", disable=not show_progress, file=sys.stderr)):
        position = int(start)
        while position < start + ctx_len:
            k = np.searchsorted(boundaries, position, side="left")  # the first boundary at or after position
            doc_start = int(boundaries[k - 1]) + 1 if k > 0 else 0
            doc_end = int(boundaries[k]) if k < len(boundaries) else len(stream)
            if position == doc_end:  # the boundary token itself: no concept
                position += 1
                continue
            if doc_start not in cache:
                cache[doc_start] = document_concepts(stream[doc_start:doc_end], pieces, concepts)
            upto = min(doc_end, start + ctx_len)
            values[w, position - start:upto - start] = cache[doc_start][position - doc_start:upto - doc_start]
            position = upto
    return ConceptTable(inputs, values.reshape(-1, len(concepts)), list(concepts))


@torch.no_grad()
def node_activations(model: SparseGPT, inputs: torch.Tensor, nodes: Sequence[tuple[str, int]],
                     batch_size: int = 16) -> np.ndarray:
    """(windows * ctx_len, len(nodes)) activations of these nodes."""
    by_site: dict[str, list[int]] = {}
    for site, index in nodes:
        by_site.setdefault(site, []).append(index)
    out = np.zeros((inputs.numel(), len(nodes)), dtype=np.float32)
    columns = {site: [k for k, (s, _) in enumerate(nodes) if s == site] for site in by_site}
    first_row = [0]  # where the batch being run goes in `out`

    def grab(x: torch.Tensor, site: str) -> None:
        flat = x[..., by_site[site]].float().reshape(-1, len(by_site[site])).cpu().numpy()
        out[first_row[0]:first_row[0] + len(flat), columns[site]] = flat

    device = next(model.parameters()).device
    with model.hooks({site: grab for site in by_site}):
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size]
            model(batch.to(device))
            first_row[0] += batch.numel()
    return out


def _average_ranks(acts: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based, ties averaged) of each column's values."""
    columns = acts.T.contiguous()
    ordered, _ = columns.sort(dim=1)
    below = torch.searchsorted(ordered, columns, right=False)
    upto = torch.searchsorted(ordered, columns, right=True)
    return ((below + upto + 1).float() / 2).T


def score_nodes(acts: np.ndarray, table: ConceptTable) -> dict[str, np.ndarray]:
    """Per node and concept: strength, AUROC or r, activation mass fraction (arrays (nodes, concepts)),
    each concept on the tokens where it is known (at least MIN_TOKENS of them, else strength 0)."""
    result = {key: np.full((acts.shape[1], len(table.concepts)), np.nan, dtype=np.float32) for key in ("strength", "score", "mass")}
    result["tokens"] = np.zeros(len(table.concepts), dtype=np.int64)
    result["direction"] = np.where(acts.sum(0) < 0, -1.0, 1.0).astype(np.float32)
    for rows, columns in table.known_groups():
        result["tokens"][columns] = int(rows.sum())
        if rows.sum() < MIN_TOKENS:
            continue
        part = _score_known(acts[rows], result["direction"], table.values[np.ix_(rows, columns)],
                            [table.concepts[c] for c in columns])
        for key in ("strength", "score", "mass"):
            result[key][:, columns] = part[key]
    result["strength"] = np.nan_to_num(result["strength"], nan=0.0)
    return result


def _score_known(acts: np.ndarray, direction: np.ndarray, values: np.ndarray,
                 concepts: Sequence[Concept]) -> dict[str, np.ndarray]:
    binary = [c for c, concept in enumerate(concepts) if concept.kind == "binary"]
    numeric = [c for c, concept in enumerate(concepts) if concept.kind == "numeric"]
    n_rows, n_nodes = acts.shape
    result = {key: np.full((n_nodes, len(concepts)), np.nan, dtype=np.float32) for key in ("strength", "score", "mass")}
    b = torch.from_numpy((values[:, binary] > 0).astype(np.float32))
    positives = b.sum(0)
    negatives = n_rows - positives
    v = torch.from_numpy(values[:, numeric].astype(np.float32))
    if numeric:
        v = (v - v.mean(0)) / v.std(0).clamp_min(1e-12)
    for lo in range(0, n_nodes, NODE_CHUNK):
        a = torch.from_numpy(acts[:, lo:lo + NODE_CHUNK])
        ranks = _average_ranks(a * torch.from_numpy(direction[lo:lo + NODE_CHUNK]))
        u = ranks.T @ b - positives * (positives + 1) / 2
        auc = u / (positives * negatives).clamp_min(1)
        auc[:, (positives < MIN_POSITIVES) | (negatives < MIN_POSITIVES)] = float("nan")
        mass = a.abs().T @ b / a.abs().sum(0).clamp_min(1e-12)[:, None]
        spread = a.std(0)
        az = (a - a.mean(0)) / spread.clamp_min(1e-12)
        r = az.T @ v / max(n_rows - 1, 1)
        r[spread == 0] = 0
        auc[spread == 0] = 0.5  # a node that never changes separates nothing
        block = slice(lo, lo + a.shape[1])
        result["score"][block, binary] = auc.numpy()
        result["strength"][block, binary] = (2 * auc - 1).clamp_min(0).numpy()
        result["mass"][block, binary] = mass.numpy()
        result["score"][block, numeric] = r.numpy()
        result["strength"][block, numeric] = r.abs().numpy()
    return result


def shuffled_weights(model: SparseGPT, sparsity: SparsityConfig, seed: int = 0) -> SparseGPT:
    """A copy whose nonzero weights are permuted within each matrix `sparsity` makes sparse: the
    same sparsity pattern, none of the learned structure."""
    shuffled = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sparse_parameters(shuffled, sparsity).items():
            if param.dim() != 2:
                continue
            nonzero = param.nonzero(as_tuple=True)
            values = param[nonzero]
            param[nonzero] = values[torch.randperm(len(values), generator=generator)]
    return shuffled


def label_nodes(model: SparseGPT, data: TokenData, sparsity: SparsityConfig, nodes: Sequence[tuple[str, int]] | None = None,
                n_tokens: int = 16384, top: int = 3, threshold: float = DEFAULT_THRESHOLD,
                concepts: Sequence[Concept] = PYTHON_CONCEPTS, baseline: bool = True,
                show_progress: bool = True) -> dict:
    """Labels of `nodes` (default: every node of every node site) in a JSON-ready dict; `sparsity`
    (the run's config) says which weights the shuffled-weights baseline permutes."""
    if nodes is None:
        nodes = [(site, i) for site, width in model.node_sites.items() for i in range(width)]
    nodes = list(nodes)
    if not nodes:  # a circuit of no nodes (the task needs none): nothing to read, nothing to label
        return {"tokens_read": 0, "threshold": threshold,
                "concepts": {c.name: {"kind": c.kind, "tokens_known": 0} for c in concepts}, "nodes": []}
    table = concept_table(data, model.tokenizer, model.config.ctx_len, n_tokens, concepts, show_progress)
    scores = score_nodes(node_activations(model, table.inputs, nodes), table)
    chance = None
    if baseline:
        chance = score_nodes(node_activations(shuffled_weights(model, sparsity), table.inputs, nodes), table)
    labels = []
    for k, (site, index) in enumerate(nodes):
        order = np.argsort(-scores["strength"][k])[:top]
        baseline_best = float(chance["strength"][k].max()) if chance is not None else None
        found = []
        for c in order:
            strength = float(scores["strength"][k, c])
            if strength < threshold:
                break
            concept = concepts[c]
            positive = scores["direction"][k] > 0 if concept.kind == "binary" else scores["score"][k, c] >= 0
            entry = {"concept": concept.name, "description": concept.description, "kind": concept.kind,
                     "strength": round(strength, 4), "sign": "+" if positive else "-"}
            entry["auroc" if concept.kind == "binary" else "correlation"] = round(float(scores["score"][k, c]), 4)
            if concept.kind == "binary":
                entry["mass_fraction"] = round(float(scores["mass"][k, c]), 4)
            if chance is not None:
                entry["baseline_same_concept"] = round(float(chance["strength"][k, c]), 4)
                entry["beats_baseline"] = strength > baseline_best
            found.append(entry)
        labels.append({"site": site, "index": index, "labels": found, "baseline_best_strength":
                       round(baseline_best, 4) if baseline_best is not None else None})
    return {"tokens_read": int(len(table.values)), "threshold": threshold,
            "concepts": {c.name: {"kind": c.kind, "tokens_known": int(n)} for c, n in zip(concepts, scores["tokens"])},
            "nodes": labels}


def format_labels(result: dict) -> str:
    lines = [f"{'node':24s} {'label (strength; AUROC or r)':58s} baseline"]
    for node in result["nodes"]:
        name = f"{node['site']}:{node['index']}"
        if not node["labels"]:
            lines.append(f"{name:24s} {'no concept above threshold':58s} {node['baseline_best_strength']}")
            continue
        shown = []
        for entry in node["labels"]:
            score = entry.get("auroc", entry.get("correlation"))
            flag = "" if entry.get("beats_baseline", True) else " (not above baseline)"
            shown.append(f"{entry['concept']}{'' if entry['sign'] == '+' else ' (-)'} {entry['strength']:.2f}; {score:.2f}{flag}")
        lines.append(f"{name:24s} {shown[0]:58s} {node['baseline_best_strength']}")
        lines += [f"{'':24s} {s}" for s in shown[1:]]
    known = [c["tokens_known"] for c in result["concepts"].values()]
    lines.append(f"{result['tokens_read']} validation tokens read; each concept scored where it is known ({min(known)} to"
                 f" {max(known)} tokens); threshold {result['threshold']}")
    return "\n".join(lines)


def read_nodes_arg(model: SparseGPT, names: Sequence[str] | None, circuit_dir: str | Path | None) -> list[tuple[str, int]] | None:
    """Nodes from --node SITE:INDEX and --circuit CIRCUIT_DIR (None: every node)."""
    from .circuit import Circuit
    from .explain import parse_node

    nodes = [parse_node(name, model) for name in names or []]
    if circuit_dir is not None:
        nodes += [(n["site"], n["index"]) for n in Circuit.load(circuit_dir).nodes]
    return list(dict.fromkeys(nodes)) or None


LABELS_FILE = "labels.json"


def label_run(run: "Workbench | Run | str | Path", node_names: Sequence[str] | None = None, circuit_dir: str | Path | None = None,
              n_tokens: int = 16384, data_dir: str | Path | None = None, threshold: float = DEFAULT_THRESHOLD,
              out: str | Path | None = None, show_progress: bool = True, force: bool = False,
              device: str = "cpu") -> tuple[dict, Path]:
    """`sparsecircuits label`: label nodes of a run (a `Workbench`, a `Run` or its directory; or of a
    circuit of it) and write labels.json. `device`: where the model runs ('cpu', 'cuda' or 'auto'), unless
    `run` is a workbench."""
    import json

    from ..io import atomic_write_text, check_output_file
    from .circuit import Circuit
    from .workbench import Workbench, circuit_workbench

    bench = circuit_workbench(Circuit.load(circuit_dir), run, device) if circuit_dir is not None else Workbench.of(run, device)
    run = bench.run
    default = Path(circuit_dir or run.path) / LABELS_FILE
    out = Path(out) if out else default
    check_output_file(out, force, default)
    model = bench.model
    result = label_nodes(model, run.data(data_dir), run.config.sparsity, read_nodes_arg(model, node_names, circuit_dir),
                         n_tokens, threshold=threshold, show_progress=show_progress)
    result["weights_sha256"] = run.weights_sha256
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    return result, out


def read_labels(directory: str | Path, weights_sha256: str) -> dict | None:
    """labels.json of a circuit or run directory, if it was made for these weights."""
    import json

    path = Path(directory) / LABELS_FILE
    if file_problem(path):  # missing, or a pipe a read would wait on: labelled again
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, *PARSE_ERRORS):
        return None
    # a damaged file is a stale cache: labelled again
    return result if problem(result, schemas.LABELS) is None and result["weights_sha256"] == weights_sha256 else None
