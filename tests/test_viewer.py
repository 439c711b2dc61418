"""The circuit page in a real headless browser, the Markdown summary, and `explain`."""

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from sparsecircuits.cli import main
from sparsecircuits.viewer import circuit_page_data, view

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


@contextmanager
def browser_page(errors: list):
    """A headless Chromium page whose script errors and console errors land in `errors`."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            yield page
        finally:
            browser.close()


HOSTILE = "# </script><!--<script> __DATA__ __JS__ <img src=x onerror=alert(1)> \u2028 &amp;"
HOSTILE_TASK = "__DATA__<img src=x onerror=alert(document.domain)>"


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory):
    """A page built from a corpus, a task file name, prompts and a circuit.json full of strings that
    once injected script or blanked the page."""
    from sparsecircuits.circuits.prune import PruneSettings, prune
    from sparsecircuits.config import load_config
    from sparsecircuits.data.prepare import prepare
    from sparsecircuits.train.trainer import train
    from tests.conftest import idiom_records, write_idiom_corpus

    root = tmp_path_factory.mktemp("hostile")
    corpus = write_idiom_corpus(root / "corpus")
    for path in corpus.glob("*.py"):
        path.write_text(path.read_text().replace("\n\n", f"\n{HOSTILE}\n", 3))
    prepare(root / "data", corpus=[corpus], vocab_size=300, show_progress=False)
    config = load_config("tiny", ["model.ctx_len=64", "train.steps=300", "train.batch_size=8",
                                  "optim.grad_clip=normalize", "optim.lr=0.01"])
    train(config, root / "data", root / "run", show_progress=False)
    task = root / f"{HOSTILE_TASK}.jsonl"
    records = idiom_records("lambda", 200, 7)
    task.write_text("".join(json.dumps(r) + "\n" for r in records))
    circuit = root / "circuit"
    prune(root / "run", str(task), circuit, PruneSettings(target_loss=0.6, steps=60, calibration_steps=8), show_progress=False)
    # The page shows the task file's prompts as they are when it is drawn.
    task.write_text("".join(json.dumps({**r, "prompt": "# <!--<script>\n" + r["prompt"]}) + "\n" for r in records))
    data = json.loads((circuit / "circuit.json").read_text())
    data["model"]["name"] = HOSTILE  # an edited circuit.json shared by someone else
    (circuit / "circuit.json").write_text(json.dumps(data))
    return view(circuit, show_progress=False), data


def test_page_data_cannot_break_out_of_its_script_block(hostile_page):
    path, circuit = hostile_page
    html = path.read_text()
    start = html.index('<script id="circuit-data" type="application/json">') + len('<script id="circuit-data" type="application/json">')
    block = html[start:html.index("</script>", start)]
    assert "<" not in block and ">" not in block and "\u2028" not in block
    data = json.loads(block)
    assert data["circuit"]["task"] == HOSTILE_TASK and data["circuit"]["model"]["name"] == HOSTILE
    assert any("<!--<script>" in x["prompt"] for x in data["examples"])
    title = html[html.index("<h1>"): html.index("</h1>")]
    assert "<img" not in title and "&lt;img" in title


@pytest.fixture(scope="module")
def page_path(circuit_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("view") / "circuit.html"
    view(circuit_dir, out, show_progress=False)
    return out


def test_page_is_self_contained_and_has_a_markdown_twin(page_path, circuit_dir):
    html = page_path.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert "<script src" not in html and "<link" not in html
    md = page_path.with_suffix(".md").read_text()
    circuit = json.loads((circuit_dir / "circuit.json").read_text())
    assert f"{circuit['metrics']['n_nodes']}" in md and "## Nodes" in md
    assert "## Paths that carry the answer (node circuit)" in md and "| share of Δ | path |" in md
    assert md.count("\n| `") >= len(circuit["nodes"])


def test_page_data_is_plain(circuit_dir):
    data = circuit_page_data(circuit_dir, show_progress=False)
    json.dumps(data)  # plain objects all the way down
    name = f"{data['nodes'][0]['site']}:{data['nodes'][0]['index']}"
    assert set(data["node_info"][name]) >= {"top", "bottom", "histogram"}
    assert len(data["examples"]) > 0 and len(data["examples"][0]["full"]) == 2
    paths = data["paths"]["node"]
    assert paths["paths"] and paths["paths_sum"] == pytest.approx(sum(
        p["flow"] for p in paths["paths"]) if paths["n_paths"] <= len(paths["paths"]) else paths["paths_sum"])
    assert all(p["nodes"][0] in ("tokens", "offset") and p["nodes"][-1] == "answer" for p in paths["paths"])


def test_page_draws_only_the_strongest_edges_of_a_huge_circuit(circuit_dir, monkeypatch):
    from sparsecircuits.viewer import render

    monkeypatch.setattr(render, "MAX_DRAWN_EDGES", 3)
    data = circuit_page_data(circuit_dir, show_progress=False)
    everything = sorted(abs(e["weight"]) for e in json.loads((circuit_dir / "circuit.json").read_text())["edges"])
    assert sorted(abs(e["weight"]) for e in data["edges"]) == everything[-3:]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: `apt-get install chromium` (Debian) to run the browser test")
def test_page_in_headless_chromium(page_path, circuit_dir, tmp_path):
    circuit = json.loads((circuit_dir / "circuit.json").read_text())
    errors = []
    with browser_page(errors) as page:
        page.goto(page_path.as_uri())
        assert page.locator("circle.node").count() == len(circuit["nodes"])
        assert page.locator("path.edge").count() == len(circuit["edges"])
        first = page.locator("circle.node").first
        name = first.get_attribute("data-node")
        first.click()
        assert page.locator("#details h2").inner_text().replace(" ", "") == name
        assert page.locator("#details .context").count() > 0
        assert page.locator("#details svg.histogram rect").count() > 0
        # the paths beside the graph: a node on one selects it
        assert page.locator("#paths li").count() >= 1
        link = page.locator("#paths a.node-link").first
        target = link.inner_text()
        link.click()
        assert page.locator("#details h2").inner_text().replace(" ", "") == target
        # Filtering a layer hides its nodes.
        page.locator("input[data-filter=layer]").first.uncheck()
        hidden = page.locator("circle.node[data-layer='0']").evaluate_all("els => els.filter(e => e.style.display === 'none').length")
        assert hidden == page.locator("circle.node[data-layer='0']").count()
        shot = Path(page_path).with_suffix(".png")
        page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    assert errors == []


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: `apt-get install chromium` (Debian) to run the browser test")
def test_hostile_page_draws_everything_and_runs_no_injected_script(hostile_page):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    path, circuit = hostile_page
    dialogs, errors = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        page.wait_for_timeout(300)  # an injected onerror fires once the broken image fails
        assert page.locator("circle.node").count() == len(circuit["nodes"]) > 0
        assert page.locator("img").count() == 0
        assert HOSTILE_TASK in page.locator("h1").inner_text()
        page.locator("circle.node").first.click()
        assert page.locator("#details h2").count() == 1
        browser.close()
    assert dialogs == [] and errors == []


def test_explain_and_bad_nodes(task_run, capsys, tmp_path):
    run, _ = task_run
    main(["explain", str(run), "--node", "0.mlp.post_act:3", "--top", "2", "--no-color"])
    out = capsys.readouterr().out
    assert "top activations" in out and "[[" in out
    for node, message in (("0.mlp.post_act:9999", "does not exist"), ("7.attn.q:1", "does not exist"),
                          ("0.mlp.post_act", "SITE:INDEX")):
        with pytest.raises(SystemExit):
            main(["explain", str(run), "--node", node])
        assert message in capsys.readouterr().err


def test_view_bad_input(capsys, tmp_path, circuit_dir):
    with pytest.raises(SystemExit):
        main(["view", str(tmp_path)])
    assert "holds no circuit" in capsys.readouterr().err
    moved = tmp_path / "moved"
    shutil.copytree(circuit_dir, moved)
    data = json.loads((moved / "circuit.json").read_text())
    data["model"]["run_dir"] = str(tmp_path / "gone")
    (moved / "circuit.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit):
        main(["view", str(moved)])
    assert "is not there any more" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: `apt-get install chromium` (Debian) to run the browser test")
def test_a_sixty_node_circuit_fits_the_page_with_whole_labels_and_a_toggle_to_its_edge_circuit(circuit_dir, tmp_path):
    """1400x900, 60 nodes: no sideways scroll, only sites with nodes get a column, every label whole in its
    node's tooltip, integers printed as integers, and the edge circuit one click away."""
    import torch

    from sparsecircuits.circuits.circuit import Circuit, nodes_of
    from sparsecircuits.circuits.graph import circuit_edges, edge_counts, weight_edge_count

    big = tmp_path / "big"
    shutil.copytree(circuit_dir, big)
    data = json.loads((big / "circuit.json").read_text())
    model = Circuit.load(circuit_dir).load_model()
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    sites = [s for s in keep if not s.endswith(("attn.q", "attn.k"))]  # q and k left out: their columns must go
    for i in range(60):
        keep[sites[i % len(sites)]][i // len(sites)] = True
    edges = circuit_edges(model, keep)
    data.update(nodes=nodes_of(keep), edges=edges)
    data["metrics"].update(n_nodes=60, n_edges=weight_edge_count(edges), n_edges_by_kind=edge_counts(edges))
    few = nodes_of(keep)[:7]
    data["edge_circuit"] = {"nodes": few, "edges": [], "metrics": {"n_nodes": 7, "n_edges": 0, "loss_circuit": 0.1}}
    (big / "circuit.json").write_text(json.dumps(data))
    for name in ("validation.json", "labels.json", "circuit.html", "circuit.md"):
        (big / name).unlink(missing_ok=True)
    page = view(big, show_progress=False)
    page_data = circuit_page_data(big, show_progress=False)
    labelled = {name: n["labels"][0]["concept"] for name, n in page_data["labels"].items() if n["labels"]}
    errors = []
    with browser_page(errors) as browser:
        browser.goto(page.as_uri())
        assert browser.locator("circle.node").count() == 60
        assert browser.evaluate("document.documentElement.scrollWidth") <= 1400
        wrap = browser.locator("#graph-wrap")
        assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), "the graph scrolls sideways"
        columns = browser.locator("text.column-label").evaluate_all("els => els.map(e => e.textContent)")
        assert not any(c.endswith((".q", ".k")) for c in columns), columns
        for name, concept in labelled.items():
            title = browser.locator(f"circle.node[data-node='{name}'] title").text_content()
            assert concept in title, (name, title)
        assert "60 nodes" in browser.locator("#summary").inner_text()
        assert "60.0000" not in browser.locator("#tables").inner_text()  # n_nodes: an integer
        assert "| n_nodes | 60 |" in page.with_suffix(".md").read_text()
        browser.locator("#circuit-toggle").click()
        browser.wait_for_function("document.querySelectorAll('circle.node').length === 7")
        assert "edge circuit: 7 nodes" in browser.locator("#summary").inner_text()
    assert errors == []
