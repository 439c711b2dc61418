"""`demo` end to end on tiny models: report, circuit pages and plots exist and agree with the circuits."""

import json
import re

from sparsecircuits.experiments.demo import demo
from tests.conftest import write_idiom_corpus

TINY = ["model.ctx_len=64", "train.steps=300", "train.batch_size=8", "optim.grad_clip=normalize", "optim.lr=0.01"]


def test_demo_on_tiny_models(tmp_path, task_run):
    _, task = task_run
    corpus = write_idiom_corpus(tmp_path / "corpus")
    out = tmp_path / "demo"
    summary = demo(out, tasks=[str(task)], target_loss=0.68, config="tiny", overrides=TINY, corpus=[str(corpus)],
                   control=False)
    assert (out / "report.html").is_file() and (out / "edges.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["tasks"] == summary["tasks"]
    assert set(summary["tasks"]) == {"lambda"}
    report = (out / "report.html").read_text()
    pages = re.findall(r"href='([^']+)'", report)
    assert len(pages) == 2
    for page in pages:
        assert (out / page).is_file()
    for model in ("sparse", "dense"):
        circuit = json.loads((out / "circuits" / model / "lambda" / "circuit.json").read_text())
        row = summary["tasks"]["lambda"][model]
        assert row["nodes"] == circuit["metrics"]["n_nodes"] and row["edges"] == circuit["metrics"]["n_edges"]
        assert f">{row['nodes']}</a>" in report
    dense_config = json.loads((out / "dense" / "config.json").read_text())
    assert dense_config["sparsity"]["l0_fraction"] == 1.0 and dense_config["model"]["keep_fraction"] == 0.25
    # A second call finds every stage done and changes nothing.
    before = (out / "circuits" / "sparse" / "lambda" / "circuit.json").stat().st_mtime
    demo(out, tasks=[str(task)], target_loss=0.68, config="tiny", overrides=TINY, corpus=[str(corpus)], control=False)
    assert (out / "circuits" / "sparse" / "lambda" / "circuit.json").stat().st_mtime == before
