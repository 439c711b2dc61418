"""`sparsecircuits view`: one self-contained HTML page per circuit (plain SVG and JavaScript, no
server, no CDN) and a Markdown summary beside it.

`circuit_page_data` returns the plain data behind the page, for notebooks.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import sys
from pathlib import Path

import torch

from ..circuits.circuit import Circuit
from ..circuits.explain import node_examples
from ..circuits.find import CircuitEvaluator
from ..circuits.validate import MAX_PER_NODE, read_validation
from ..errors import SparseCircuitsError
from ..io import atomic_write_text, check_output_file, directory_lock
from ..rundir import Run
from ..tasks.records import candidate_logits
from ..circuits.labels import label_nodes, read_labels
from ..circuits.paths import circuit_paths, write_paths
from ..circuits.workbench import Workbench, circuit_workbench

ASSETS = Path(__file__).parent / "assets"
N_EXAMPLES = 16
MAX_DRAWN_EDGES = 5000


@torch.no_grad()
def _candidate_probs(model, task, hooks=None) -> torch.Tensor:
    """p(correct), p(incorrect) under the full-vocabulary softmax at each prompt's last position."""
    tokens, last, correct, incorrect = task.batch()
    with model.hooks(hooks or {}):
        probs = model(tokens, at=last).float().softmax(-1)
    return candidate_logits(probs, correct, incorrect).cpu()  # (B, 2): the same gather as the logits


def circuit_page_data(circuit_dir: str | Path, run: Workbench | Run | str | Path | None = None, n_tokens: int = 16384,
                      top: int = 6, show_progress: bool = True, task: str | Path | None = None,
                      device: str = "cpu") -> dict:
    """Everything the page shows: the circuit, validation, node examples and histograms, per-node
    ablation effects, the paths that carry the answer (node and edge circuit), and held-out examples
    with both models' probabilities."""
    circuit = Circuit.load(circuit_dir)
    bench = circuit_workbench(circuit, run, device)
    run, model = bench.run, bench.model
    splits = bench.splits(circuit.task_source(task))
    test = splits.test
    means = bench.means(circuit.data["ablation"], circuit.means_data, show_progress)
    keep = circuit.keep(model)
    validation = read_validation(circuit_dir)
    if validation is not None or len(circuit.nodes) > MAX_PER_NODE:
        ablation = {f"{r['site']}:{r['index']}": r for r in (validation or {}).get("per_node", [])}
    else:  # the full model's loss with each node ablated alone: cheap, and the page needs it
        evaluator = CircuitEvaluator(model, splits, means)
        everything = {site: torch.ones_like(k) for site, k in keep.items()}
        ablation = {}
        for node in circuit.nodes:
            alone = {site: k.clone() for site, k in everything.items()}
            alone[node["site"]][node["index"]] = False
            ablation[f"{node['site']}:{node['index']}"] = {"loss_full_model_without_node": evaluator.loss(alone)}
    data = run.data(circuit.means_data)
    wanted = [(n["site"], n["index"]) for n in circuit.nodes]
    labels = read_labels(circuit_dir, run.weights_sha256)
    if labels is None or {(n["site"], n["index"]) for n in labels["nodes"]} != set(wanted):  # cached for other nodes
        labels = label_nodes(model, data, run.config.sparsity, wanted, show_progress=show_progress)
    info = node_examples(model, data, nodes=[(n["site"], n["index"]) for n in circuit.nodes],
                         n_tokens=n_tokens, top=top, show_progress=show_progress)
    shown = dataclasses.replace(test, prompts=test.prompts[:N_EXAMPLES], correct=test.correct[:N_EXAMPLES],
                                incorrect=test.incorrect[:N_EXAMPLES])
    full = _candidate_probs(model, shown)
    with circuit.only(model, means):
        in_circuit = _candidate_probs(model, shown)
    decode = model.to_string
    examples = [{"prompt": decode(shown.prompts[i]), "correct": decode([int(shown.correct[i])]),
                 "incorrect": decode([int(shown.incorrect[i])]),
                 "full": [round(float(p), 4) for p in full[i]], "circuit": [round(float(p), 4) for p in in_circuit[i]]}
                for i in range(len(shown))]
    # A browser draws a few thousand SVG edges well; a near-whole-model "circuit" has far more.
    edges = circuit.edges
    if len(edges) > MAX_DRAWN_EDGES:
        edges = sorted(edges, key=lambda e: -abs(e["weight"]))[:MAX_DRAWN_EDGES]
    paths = circuit_paths(model, test, means, circuit.data)
    return {"circuit": {k: v for k, v in circuit.data.items() if k not in ("nodes", "edges")},
            "nodes": circuit.nodes, "edges": edges, "validation": validation, "d_model": model.config.d_model,
            "paths": paths,
            "node_info": info, "node_ablation": ablation, "examples": examples,
            "labels": {f"{n['site']}:{n['index']}": n for n in labels["nodes"]},
            "labels_summary": {"threshold": labels["threshold"], "tokens_read": labels["tokens_read"]}}


# Characters that could end or confuse a <script> block (`</script>`, `<!--`) or a JavaScript string,
# written as JSON escapes: the browser's JSON.parse reads back exactly the same text.
_SCRIPT_SAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_PLACEHOLDER = re.compile(r"__(CSS|JS|TITLE|DATA|MAIN)__")


def _finite(value):
    """NaN and infinities as null: JSON.parse rejects them, and one would blank the page."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def script_safe_json(data) -> str:
    """JSON that can sit inside <script type="application/json"> whatever strings it holds."""
    return json.dumps(_finite(data), separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)


def render_page(main: str, script: str, title: str, data, styles: tuple[str, ...] = ("viewer.css",)) -> str:
    """A viewer page: page.html (the shell every page shares) with the asset `main` as its <main>, the
    stylesheets `styles`, the shared circuit layout and then `script` as its JavaScript, and `data`."""
    values = {"CSS": "".join((ASSETS / name).read_text() for name in styles),
              "JS": (ASSETS / "layout.js").read_text() + "\n" + (ASSETS / script).read_text(),
              "TITLE": html.escape(title), "DATA": script_safe_json(data), "MAIN": (ASSETS / main).read_text()}
    # One pass over the template: text that came from a value is never searched for placeholders again.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], (ASSETS / "page.html").read_text())


def render_html(data: dict) -> str:
    title = f"Circuit for {data['circuit']['task']} ({data['circuit']['model']['name']})"
    return render_page("circuit_main.html", "viewer.js", title, data)


def label_text(node: dict | None) -> str:
    """A node's best label in a few words, e.g. `in_string 0.82` or `-`."""
    if not node or not node["labels"]:
        return "-"
    best = node["labels"][0]
    sign = "" if best["sign"] == "+" else " (-)"
    flag = "" if best.get("beats_baseline", True) else " (not above baseline)"
    return f"{best['concept']}{sign} {best['strength']:.2f}{flag}"


_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def md_text(text: str) -> str:
    """A string as plain Markdown text in a table cell: HTML's special characters as entities (no
    tag a renderer could run), Markdown's punctuation escaped, line breaks as spaces."""
    text = html.escape(str(text), quote=False).replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def md_code(text: str) -> str:
    """A string as a Markdown code span that its own backticks cannot close: the fence is one
    backtick longer than the longest run inside (CommonMark); a table's pipes escaped; line breaks as spaces."""
    text = str(text).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_markdown(data: dict) -> str:
    c, m = data["circuit"], data["circuit"]["metrics"]
    lines = [f"# Circuit for {md_code(c['task'])}", "",
             f"Model {md_code(c['model']['name'])} (config {md_text(c['model']['config_hash'])}), target loss {c['target_loss']},"
             f" {md_text(c['ablation'])} ablation.", "", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in m.items()  # our own keys and numbers
              if not isinstance(v, dict)]
    v = data["validation"]
    if v:
        lines += ["", "## Validation", "", "| check | task loss | verdict |", "|---|---|---|",
                  f"| full model | {v['loss_full_model']:.4f} | |",
                  f"| circuit only (sufficiency) | {v['loss_circuit']:.4f} | {'pass' if v['sufficient'] else 'FAIL'} |",
                  f"| circuit only, logit scale calibrated | {v['loss_circuit_calibrated']:.4f} | |",
                  f"| circuit ablated (necessity) | {v['loss_circuit_ablated']:.4f} | {'pass' if v['necessary'] else 'FAIL'} |",
                  f"| random nodes, same size per site | {v['loss_random_same_size']:.4f} | |"]
        if "loss_empty_circuit" in v:
            lines.append(f"| empty circuit (every node ablated) | {v['loss_empty_circuit']:.4f} | |")
        if "control_real_fitted" in v:
            lines += ["", "Same footing, node count chosen on the records the mask was trained on:", "",
                      "| labels | nodes | edges | target | loss fitted | loss on test records |", "|---|---|---|---|---|---|"]
            for name, key in (("real", "control_real_fitted"), ("shuffled", "control_shuffled")):
                s = v[key]
                lines.append(f"| {name} | {s['n_nodes']} | {s['n_edges']} | {'reached' if s['reached_target'] else 'missed'}"
                             f" | {s['loss_fitted']:.4f} | {s['loss_test']:.4f} |")
        lines += ["", "| control | verdict | why |", "|---|---|---|"]
        lines += [f"| {md_text(name)} | {'pass' if c['passed'] else 'FAIL'} | {md_text(c['why'])} |" for name, c in v.get("controls", {}).items()]
        lines += [] if "evidence" not in v else ["", f"**{'Evidence' if v['evidence'] else 'Not evidence'}**: sufficient, necessary and every control"
                      f" run {'passed' if v['evidence'] else 'did not all pass'}."]
    labelled = [n for n in data["labels"].values() if n["labels"]]
    lines += ["", "## Nodes", "", f"{len(labelled)} of {len(data['nodes'])} nodes have a Python concept above the threshold"
              f" ({data['labels_summary']['threshold']}; strength is 2 AUROC - 1 or |r|; `(not above baseline)`: the same"
              " nodes of a shuffled-weights copy reach as much by chance).", "",
              "| node | label | full-model loss without it | top activating token |", "|---|---|---|---|"]
    for node in data["nodes"]:
        name = f"{node['site']}:{node['index']}"
        effect = data["node_ablation"].get(name, {}).get("loss_full_model_without_node")
        top = data["node_info"].get(name, {}).get("top") or []
        token = top[0]["tokens"][top[0]["focus"]] if top else ""
        label = md_text(label_text(data["labels"].get(name)))
        lines.append(f"| {md_code(name)} | {label} | {effect:.4f} | {md_code(json.dumps(token)[1:-1])} |" if effect is not None
                     else f"| {md_code(name)} | {label} | | |")
    lines += paths_markdown(data)
    lines += ["", "## Examples (held-out)", "", "| prompt (end) | correct | incorrect | full p(correct) | circuit p(correct) |",
              "|---|---|---|---|---|"]
    for x in data["examples"]:
        prompt = json.dumps(x["prompt"][-50:])[1:-1]
        lines.append(f"| {md_code(prompt)} | {md_code(json.dumps(x['correct'])[1:-1])} | {md_code(json.dumps(x['incorrect'])[1:-1])} |"
                     f" {x['full'][0]:.3f} | {x['circuit'][0]:.3f} |")
    others = ", ".join(f"{n} {md_text(kind)}" for kind, n in c["metrics"].get("n_edges_by_kind", {}).items() if kind != "weight" and n)
    lines += ["", f"{c['metrics']['n_edges']} weight edges" + (f" (besides: {others})" if others else "")
              + "; open the HTML page to see them.", ""]
    return "\n".join(lines)


def paths_markdown(data: dict, top: int = 5) -> list[str]:
    """The top paths of the node circuit (and of the edge circuit), each node with its label."""
    lines = []
    for which, result in (("node circuit", data["paths"]["node"]), ("edge circuit", data["paths"]["edge"])):
        if result is None:
            continue
        lines += ["", f"## Paths that carry the answer ({which})", "",
                  f"Logit difference (correct minus incorrect) {result['logit_diff']:.3f} with the circuit,"
                  f" {result['logit_diff_empty']:.3f} with every node at its mean: the nodes add Δ {result['delta']:.3f},"
                  f" which {result['n_paths']} paths carry ({result['paths_sum']:.3f} together, a first-order split;"
                  f" `tokens`: enters where a node reads the residual stream, `offset`: a node's own). The top 3 carry"
                  f" {result['top3_share']:.0%} of Δ.", "", "| share of Δ | path |", "|---|---|"]
        for path in result["paths"][:top] + result["against"][:1]:
            named = [md_code(n) + (f" ({md_text(label_text(data['labels'].get(n)))})"
                                   if data["labels"].get(n, {}).get("labels") else "") for n in path["nodes"]]
            lines.append(f"| {path['share']:+.0%} | {' → '.join(named)} |")
    return lines


def view(circuit_dir: str | Path, out: str | Path | None = None, run: Workbench | Run | str | Path | None = None,
         show_progress: bool = True, force: bool = False, task: str | Path | None = None, device: str = "cpu") -> Path:
    """Write circuit.html (default inside CIRCUIT_DIR) and circuit.md beside it, and the paths that carry
    the answer to CIRCUIT_DIR/paths.json (as `paths` does). Files elsewhere that exist already are
    replaced only with `force`. `device`: where the model runs ('cpu', 'cuda' or 'auto'), unless `run` is
    a workbench."""
    default = Path(circuit_dir) / "circuit.html"
    out = Path(out) if out else default
    if out.is_dir():
        raise SparseCircuitsError(f"--out {out} is a folder: give the path of the HTML file to write, e.g. {out / 'circuit.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise SparseCircuitsError(f"--out {out} must end in .html (the Markdown summary is written beside it as .md)")
    for target, own in ((out, default), (out.with_suffix(".md"), default.with_suffix(".md"))):
        check_output_file(target, force, own)
    data = circuit_page_data(circuit_dir, run, show_progress=show_progress, task=task, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    with directory_lock(Path(circuit_dir)):
        atomic_write_text(out, render_html(data))
        atomic_write_text(out.with_suffix(".md"), render_markdown(data))
        write_paths(circuit_dir, data["circuit"]["task"], data["paths"])
    if show_progress:
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.md')}", file=sys.stderr)
    return out
