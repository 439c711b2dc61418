"""The demo's report, rendered from its summary alone (no model is loaded or evaluated here):
DIR/report.html, DIR/edges.png and the lines `sparsecircuits demo` prints at the end."""

from __future__ import annotations

import html
import math
from pathlib import Path

from ..io import atomic_write_text
from ..plots import pyplot, save
from .claim import COMPARISONS


def write_report(out: Path, summary: dict) -> None:
    """DIR/report.html and DIR/edges.png from the summary."""
    plot_edges(out / "edges.png", summary["circuits"])
    atomic_write_text(out / "report.html", render_report(summary))


def plot_edges(path: Path, circuits: dict) -> None:
    plt = pyplot()
    names = list(circuits)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.6))
    if names:
        ax.bar(range(len(names)), [circuits[t]["edges"] for t in names], color="#2463eb")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "the sparse model does no task to the target", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("circuit edges")
    ax.set_title("The sparse model's circuits")
    save(fig, path)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _controls_cell(x: dict) -> str:
    return ", ".join(f"{name} {'pass' if c['passed'] else 'FAIL'}" for name, c in x["controls"].items())


def _labelled_cell(x: dict) -> str:
    """'12/40 = 30% (9)': nodes with a Python concept above threshold, and how many beat the baseline."""
    return (f"{x['nodes_labelled']}/{x['nodes']} = {x['nodes_labelled'] / max(x['nodes'], 1):.0%}"
            f" ({x['nodes_labelled_above_baseline']})")


def _hard_cell(x: dict) -> str:
    return "; ".join(f"{form}: {_fmt(v['circuit'])} (full {_fmt(v['full_model'])})" if "circuit" in v
                     else f"{form}: n/a" for form, v in x["hard_forms"].items()) or "-"


def _attribution_cell(x: dict) -> str:
    a = x["attribution"]
    return f"{a['nodes']} / {a['edges']} ({_fmt(a['loss_circuit'], 3)}, {a['seconds']:.0f} s)"


def _edge_cell(x: dict) -> str:
    """'20 / 22 (0.104)': the circuit `prune --edges` kept, or '-' when edges were not pruned."""
    edge = x.get("edge_circuit")
    if not edge:
        return "-"
    return f"{edge['n_nodes']} / {edge['n_edges']} ({_fmt(edge['loss_circuit'], 3)})" + ("" if edge["reached"] else " missed")


def _paths_cell(x: dict) -> str:
    """'38% of 2.05 (253 paths)': the share of Δ the node circuit's top 3 paths carry, or '-'."""
    found = (x.get("paths") or {}).get("node")
    return "-" if not found else f"{found['top3_share']:.0%} of {found['delta']:.2f} ({found['n_paths']} paths)"


def _evidence_cell(x: dict) -> str:
    return "yes" if x["evidence"] else "NO: " + ", ".join(x["failed"])


def _ratio_text(c: dict) -> str:
    """'2.41 [1.60, 3.62], median 2.20, 1.49 to 2.90 leaving one task out'."""
    text = f"{c['edges_ratio_geomean']:.2f}"
    if c.get("edges_ratio_interval"):
        text += f" [{c['edges_ratio_interval'][0]:.2f}, {c['edges_ratio_interval'][1]:.2f}]"
    if c.get("edges_ratio_median") is not None:
        text += f", median {c['edges_ratio_median']:.2f}"
    loo = c.get("edges_ratio_leave_one_out")
    if loo:
        text += f", {loo['min']:.2f} to {loo['max']:.2f} leaving one task out"
    return text


def _seed_range(r: dict) -> str:
    return "" if not r.get("ratio_over_seeds") else f" (seeds {r['ratio_over_seeds'][0]:.2f}-{r['ratio_over_seeds'][1]:.2f})"


def claim_lines(summary: dict) -> list[str]:
    """Claim (a) in words: per comparison and target, the count, the geometric means and the ratio with
    its 95% bootstrap interval over tasks, median and leave-one-out range."""
    lines = []
    bracket = summary.get("dense_at_sparse_loss")
    if bracket:
        lines.append("dense models for the sparse loss: " + ", ".join(
            f"{m} {t['val_loss']:.4f} ({t['steps']} steps)" for m, t in bracket["tried"].items())
            + f"; bracketing: {', '.join(bracket['models'])}" + ("" if bracket["bracketed"] else " (not bracketed)"))
    for dense, per_target in summary["claim"].items():
        lines.append(f"claim (a) against the {COMPARISONS[dense]}:")
        for c in per_target:
            if c["count"]:
                lines.append(f"  target {c['target_loss']:g}: {c['count']} tasks, weight edges geometric mean sparse"
                             f" {c['edges_geomean']['sparse']:.1f}, dense {c['edges_geomean']['dense']:.1f}, dense / sparse "
                             + _ratio_text(c) + " ("
                             + ", ".join(f"{t} {r['edges_ratio']:.2f}{_seed_range(r)}" for t, r in c["tasks"].items()) + ")"
                             + (f"; not evidence on test: {', '.join(c['not_evidence'])}" if c.get("not_evidence") else ""))
            else:
                lines.append(f"  target {c['target_loss']:g}: no task every model does with margin has a circuit meeting"
                             f" the target in each ({len(c['excluded'])} left out)")
    if not summary["claim"]:
        lines.append(f"claim (a): {summary.get('claim_skipped', 'no dense baseline to compare with')}")
    return lines


def render_report(summary: dict) -> str:
    e = html.escape
    models = summary["models"]
    model_rows = "".join(
        f"<tr><td>{e(m)}</td><td class=num>{models[m]['val_loss']:.4f}</td><td class=num>{len(models[m]['does_at_target'])}"
        f"</td><td class=num>{len(models[m]['does_with_margin'])}</td></tr>" for m in models)
    if summary["circuits"]:
        rows = "".join(
            f"<tr><td>{e(t)}</td><td class=num>{x['task_loss']:.4f}</td><td class=num><a href='{e(x['page'])}'>{x['nodes']}</a></td>"
            f"<td class=num>{x['edges']}</td><td class=num>{_fmt(x['loss_circuit'])}"
            + (f" ({x['loss_circuit_interval'][0]:.3f}-{x['loss_circuit_interval'][1]:.3f})" if x["loss_circuit_interval"] else "")
            + f"</td><td class=num>{_fmt(x['loss_circuit_ablated'])}</td><td>{e(_controls_cell(x))}</td>"
            f"<td>{e(_evidence_cell(x))}</td><td class=num>{_labelled_cell(x)}</td><td>{e(_hard_cell(x))}</td>"
            f"<td>{e(', '.join(x['audit_flagged']) or 'none')}</td><td class=num>{_attribution_cell(x)}</td>"
            f"<td class=num>{_edge_cell(x)}</td><td class=num>{_paths_cell(x)}</td></tr>"
            for t, x in summary["circuits"].items())
        circuits = (f"<table><tr><th>task</th><th>full-model loss</th><th>nodes</th><th>edges</th><th>circuit loss (95% interval)"
                    f"</th><th>circuit ablated</th><th>controls</th><th>evidence</th><th>nodes labelled (above shuffled"
                    f" baseline)</th><th>circuit loss on the hard forms</th><th>degenerate cue</th><th>attribution patching:"
                    f" nodes / edges (loss, seconds)</th><th>edge circuit: nodes / weight edges (test loss)</th><th>top 3 paths: share"
                    f" of the logit difference the nodes add</th></tr>{rows}</table>"
                    "<img src='edges.png' alt='circuit edges per task'>")
    else:
        circuits = f"<p><b>No circuit:</b> {e(summary['no_circuits'])}.</p>"
    claim_blocks = []
    for dense, per_target in summary["claim"].items():
        body = ""
        for c in per_target:
            tasks = "".join(f"<tr><td>{e(t)}</td><td class=num>{r['sparse_edges']}</td><td class=num>{r['dense_edges']:.0f}</td>"
                            f"<td class=num>{r['edges_ratio']:.2f}{e(_seed_range(r))}</td><td class=num>{r['nodes_ratio']:.2f}</td>"
                            f"<td>{e(', '.join(m for m, v in r['evidence'].items() if v['evidence'] is False) or 'all')}</td></tr>"
                            for t, r in c["tasks"].items())
            left = "".join(f"<li>{e(t)}: {e(why)}</li>" for t, why in c["excluded"].items())
            head = (f"{c['count']} tasks; geometric-mean weight edges sparse {c['edges_geomean']['sparse']:.1f}, dense"
                    f" {c['edges_geomean']['dense']:.1f}: dense / sparse <b>{e(_ratio_text(c))}</b>"
                    if c["count"] else "no task every model does with margin has a circuit meeting the target in each: no ratio")
            body += (f"<h4>target {c['target_loss']:g}</h4><p>{head}</p>"
                     + (f"<table><tr><th>task</th><th>sparse edges</th><th>dense edges</th><th>edges dense / sparse (range over"
                        f" pruning seeds)</th><th>nodes dense / sparse</th><th>evidence on test records (not"
                        f" evidence in)</th></tr>{tasks}</table>" if tasks else "")
                     + f"<details><summary>{len(c['excluded'])} tasks left out</summary><ul>{left}</ul></details>")
        claim_blocks.append(f"<h3>Against the {e(COMPARISONS[dense])}</h3>{body}")
    claim_html = "".join(claim_blocks) or f"<p>Not drawn: {e(summary.get('claim_skipped', 'no dense baseline to compare with'))}.</p>"
    losses = "".join(f"<tr><td>{e(t)}</td>" + "".join(
        f"<td class=num>{_fmt(summary['task_losses'][m][t].get('loss'))}</td>" for m in models) + "</tr>"
        for t in summary["task_losses"]["sparse"])
    matched = summary["dense_matched_steps"]
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sparsecircuits demo report</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#1d232a}}table{{border-collapse:collapse;margin:6px 0 16px}}
th,td{{border:1px solid #ddd;padding:3px 8px}}td.num{{text-align:right;font-variant-numeric:tabular-nums}}</style></head><body>
<h1>Weight-sparse model, its circuits, and dense baselines</h1>
<table><tr><th>model</th><th>validation loss</th><th>tasks done to {summary['target_loss']:g}</th>
<th>with margin (&le; {summary['margin'] * summary['target_loss']:g})</th></tr>{model_rows}</table>
{_dense_html(models, matched)}
{_cuts_html(summary)}
<h2>The sparse model's circuits (every task it does to the target; click a node count)</h2>
{circuits}
<h2>How a circuit formed over training</h2>
{_evolution_html(summary["evolution"])}
<h2>Claim (a): circuit edges, sparse against dense, at each target</h2>
<p>Edges are weight edges, nonzero weights between kept nodes, as the paper counts them. Each target counts the
tasks every model compared does with margin (full-model loss &le; {summary['margin']:g} x the target on the choose
records), leaving out tasks a degenerate cue answers; each circuit is the smallest of several pruning seeds that
meets the target on the choose records. Against the dense model at the sparse loss, dense edges are interpolated in
log edges between the two finished dense schedules whose validation losses bracket the sparse model's. The ratio
is a geometric mean over tasks with a 95% bootstrap interval over tasks; whether each circuit is evidence is
measured on the test records and reported, never used to choose tasks.</p>
<img src="claim.png" alt="circuit edges against target loss">
{claim_html}
<h2>Task losses (choose records)</h2>
<table><tr><th>task</th>{''.join(f'<th>{e(m)}</th>' for m in models)}</tr>{losses}</table>
</body></html>"""


def _dense_html(models: dict, matched: int | None) -> str:
    if "dense" not in models:
        return "<p>No dense models were trained: claim (a), which alone needs them, did not fit the time budget.</p>"
    return ("<p>dense: the same shape on the same tokens with its full schedule (a stronger baseline). dense_matched: "
            + ("not trained (the dense model never reached the sparse loss)" if matched is None else
               f"a finished {matched}-step schedule, the steps the dense run took to reach the sparse loss")
            + "; dense_steps<i>N</i>: finished schedules of N steps, trained until two bracket the sparse model's"
            " validation loss.</p>")


def _cuts_html(summary: dict) -> str:
    cuts = summary.get("cuts") or []
    return ("<p><b>Cut to fit the time budget (--minutes):</b></p><ul>" + "".join(f"<li>{html.escape(c)}</li>" for c in cuts)
            + "</ul>") if cuts else ""


def _evolution_html(evolution: dict) -> str:
    e = html.escape
    if "skipped" in evolution:
        return f"<p>Not drawn: {e(evolution['skipped'])}.</p>"
    rows = "".join(f"<tr><td class=num>{r['step']}</td><td class=num>{r['val_loss']:.4f}</td><td class=num>{r['task_loss']:.4f}</td>"
                   f"<td class=num>{r['n_nodes'] if r['reached'] else 'not reached'}</td>"
                   f"<td class=num>{r['n_edges'] if r['reached'] else ''}</td></tr>" for r in evolution["checkpoints"])
    overlaps = "; ".join(f"{t['from_step']} to {t['to_step']}: Jaccard {t['jaccard']:.2f}, {t['entered']} entered,"
                         f" {t['left']} left" for t in evolution["transitions"]) or "no two consecutive circuits"
    return (f"<p>The smallest circuit, {e(evolution['task'])}, pruned again at each model the sparse run kept"
            f" (<a href='{e(evolution['page'])}'>the circuits side by side, a slider over steps</a>). Node-set overlap:"
            f" {e(overlaps)}.</p><table><tr><th>step</th><th>validation loss</th><th>task loss</th><th>nodes</th>"
            f"<th>edges</th></tr>{rows}</table><img src='{e(evolution['plot'])}' alt='the circuit over training'>")


def format_summary(summary: dict) -> str:
    lines = ["validation loss: " + ", ".join(f"{m} {v['val_loss']:.4f} ({len(v['does_at_target'])} tasks to the target,"
                                               f" {len(v['does_with_margin'])} with margin)"
                                               for m, v in summary["models"].items())]
    if not summary["circuits"]:
        lines.append(f"no circuit: {summary['no_circuits']}")
    else:
        lines.append(f"{'task':26s} {'loss':>7s} {'nodes':>6s} {'edges':>6s} {'circuit':>8s}  evidence; controls; hard forms")
    for task, x in summary["circuits"].items():
        lines.append(f"{task:26s} {x['task_loss']:7.4f} {x['nodes']:6d} {x['edges']:6d} {_fmt(x['loss_circuit']):>8s}"
                     f"  {_evidence_cell(x)}; {_controls_cell(x)}; {_hard_cell(x)}"
                     + (f"; edge circuit {_edge_cell(x)}" if x.get("edge_circuit") else "")
                     + (f"; top 3 paths {_paths_cell(x)}" if (x.get("paths") or {}).get("node") else ""))
    evolution = summary["evolution"]
    if "skipped" in evolution:
        lines.append(f"evolution: not drawn ({evolution['skipped']})")
    else:
        lines.append(f"evolution of {evolution['task']} over steps " + ", ".join(
            f"{r['step']}: {r['n_nodes'] if r['reached'] else 'not reached'}" for r in evolution["checkpoints"])
            + f" nodes ({evolution['page']})")
    lines += [f"cut to fit the time budget: {c}" for c in summary.get("cuts") or []]
    return "\n".join(lines + claim_lines(summary))
