"""DIR/evolution.html: the circuits a task has at consecutive kept checkpoints, drawn with the
circuit page's layout over the union of their nodes (so a node keeps its place), a slider over
steps, nodes that persist from the previous circuit in one colour and new ones in another."""

from __future__ import annotations

from pathlib import Path

from ..circuits.circuit import Circuit
from ..io import atomic_write_text
from .render import MAX_DRAWN_EDGES, render_page


def evolution_page_data(result: dict, out: Path) -> dict:
    steps = []
    for row in result["checkpoints"]:
        entry = {key: row[key] for key in ("step", "val_loss", "l0_fraction", "task_loss", "reached", "n_nodes", "n_edges",
                                           "loss_circuit", "evidence")}
        if row.get("circuit"):  # the strongest edges only, as on the circuit page
            circuit = Circuit.load(out / row["circuit"])
            entry["nodes"] = circuit.nodes
            entry["edges"] = sorted(circuit.edges, key=lambda e: -abs(e["weight"]))[:MAX_DRAWN_EDGES]
        steps.append(entry)
    return {"task": Path(result["task"]).stem, "target_loss": result["target_loss"], "steps": steps,
            "transitions": result["transitions"]}


def write_evolution_page(result: dict, out: Path, path: Path, d_model: int | None = None) -> Path:
    data = evolution_page_data(result, out)
    data["d_model"] = d_model
    title = f"How the circuit for {data['task']} forms over training"
    page = render_page("evolution_main.html", "evolution.js", title, data, styles=("viewer.css", "evolution.css"))
    atomic_write_text(path, page)
    return path
