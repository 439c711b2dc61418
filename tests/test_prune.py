"""Pruning, the circuit directory and validation end to end on a tiny trained model."""

import json

import pytest
import torch

from sparsecircuits.circuits import Circuit
from sparsecircuits.circuits.validate import validate
from sparsecircuits.circuits.validate import format_validation
from sparsecircuits.circuits.graph import circuit_edges
from sparsecircuits.cli import main
from sparsecircuits.tasks.records import load_task, pair_logits, task_loss


def test_circuit_json_is_complete_and_consistent(circuit_dir, task_run):
    run, _ = task_run
    data = json.loads((circuit_dir / "circuit.json").read_text())
    assert {"task", "model", "target_loss", "ablation", "nodes", "edges", "metrics", "settings"} <= set(data)
    m = data["metrics"]
    for key in ("n_nodes", "n_edges", "loss_full_model", "loss_circuit", "loss_circuit_ablated",
                "loss_random_same_size", "accuracy_circuit"):
        assert key in m, key
    # n_edges counts weight edges, as the paper does; every kind is counted beside it
    assert m["n_nodes"] == len(data["nodes"]) > 0 and m["n_edges"] == sum(e["kind"] == "weight" for e in data["edges"])
    assert sum(m["n_edges_by_kind"].values()) == len(data["edges"]) > m["n_edges"] and data["format"] == 2
    assert m["loss_choose"] <= data["target_loss"]  # the count was chosen on the choose records
    assert data["model"]["name"] == run.name and data["ablation"] == "mean"
    circuit = Circuit.load(circuit_dir)
    model = circuit.load_model()
    assert len(circuit_edges(model, circuit.keep(model))) == len(data["edges"])


def test_running_only_the_circuit_reproduces_its_loss(circuit_dir, task_run):
    _, task_path = task_run
    circuit = Circuit.load(circuit_dir)
    model = circuit.load_model()
    task = load_task(str(task_path), model.tokenizer, "test")
    with circuit.only(model):
        logits = pair_logits(model, task)
    assert abs(float(task_loss(logits * circuit.logit_scale)) - circuit.metrics["loss_circuit_calibrated"]) < 1e-4
    assert abs(float(task_loss(logits)) - circuit.metrics["loss_circuit"]) < 1e-4


def test_validate_writes_its_table(circuit_dir):
    result = validate(circuit_dir, show_progress=False)
    # sufficiency is judged on the test records against the target met on the choose records; on
    # this tiny model the two differ by a few hundredths from CPU to CPU, so the verdict is checked
    # against its numbers rather than assumed
    assert result["sufficient"] == (result["loss_circuit"] <= result["target_loss"])
    assert result["loss_circuit"] < result["loss_random_same_size"] and result["necessary"]
    assert result["loss_circuit_ablated"] > result["loss_circuit"]
    assert "control_shuffled" in result and result["control_shuffled"]["n_nodes"] > 0
    assert set(result["controls"]) == {"nonsense_rule", "shuffled_labels", "random_nodes", "empty_circuit"}
    assert all(isinstance(c["passed"], bool) and c["why"] for c in result["controls"].values())
    assert result["controls"]["shuffled_labels"]["n_nodes"] == result["control_shuffled"]["n_nodes"]
    assert result["evidence"] == (result["sufficient"] and result["necessary"]
                                  and all(c["passed"] for c in result["controls"].values()))
    low, high = result["loss_circuit_interval"]
    assert low <= result["loss_circuit"] <= high
    table = format_validation(result)
    print(table)
    assert "shuffled labels" in table and "real labels" in table and "\nverdict: " in table
    assert len(result["per_node"]) == result["n_nodes"]
    assert json.loads((circuit_dir / "validation.json").read_text())["task"] == result["task"]
    big = validate(circuit_dir, control=False, show_progress=False, max_per_node=result["n_nodes"] - 1)
    assert big["per_node"] == [] and "per-node ablations skipped" in format_validation(big)


def test_validate_trains_no_mask_on_the_real_labels_and_agrees_with_training_it_again(circuit_dir, tmp_path, monkeypatch):
    """The same-footing control's real-label ranking is the one `prune` stored (same records, settings and
    seed): validate trains masks only for the shuffled labels and the nonsense rule."""
    import importlib
    import shutil

    from sparsecircuits.circuits import find

    validate_module = importlib.import_module("sparsecircuits.circuits.validate")  # the package exports the function

    trained, train_mask = [], find.train_mask
    monkeypatch.setattr(find, "train_mask", lambda model, task, *args, **kwargs: trained.append(task.name)
                        or train_mask(model, task, *args, **kwargs))
    shutil.copytree(circuit_dir, tmp_path / "reused")
    reused = validate(tmp_path / "reused", show_progress=False)
    nonsense = reused["control_nonsense"].get("rule") is not None
    assert sorted(trained) == sorted([f"{reused['task']} (shuffled labels)"] + [f"{reused['task']} (nonsense rule)"] * nonsense)
    monkeypatch.setattr(validate_module, "stored_ranking", lambda *args: None)  # as before: the real mask trained again
    shutil.copytree(circuit_dir, tmp_path / "again")
    again = validate(tmp_path / "again", show_progress=False)
    assert len(trained) == 2 * (2 + nonsense) - 1 and again["control_real_fitted"] == reused["control_real_fitted"]


def test_prune_bad_input(capsys, task_run, trained_run, tmp_path, circuit_dir):
    run, task = task_run

    def fails(argv, message):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and message in err, err

    out = tmp_path / "c"
    fails(["prune", str(run), "--task", "no_such_task", "--out", str(out)], "unknown task 'no_such_task'")
    fails(["prune", str(run), "--task", str(tmp_path / "none.jsonl"), "--out", str(out)], "task file not found")
    fails(["prune", str(run), "--task", str(task), "--out", str(out), "--target-loss", "0.001", "--steps", "5"],
          "full model's loss")
    fails(["prune", str(tmp_path), "--task", str(task), "--out", str(out)], "not a run directory")
    assert not out.exists() and not list(tmp_path.glob(".c.*"))
    fails(["validate", str(tmp_path)], "holds no circuit")
    fails(["validate", str(circuit_dir), "--run-dir", str(trained_run)], "pruned from other weights")


def test_prune_refuses_an_unreachable_target_before_computing_node_means(task_run, tmp_path, monkeypatch):
    from sparsecircuits.circuits import find
    from sparsecircuits.circuits.prune import PruneSettings, prune
    from sparsecircuits.rundir import Run

    run, task = task_run
    calls = []
    monkeypatch.setattr(Run, "node_means", lambda *args, **kwargs: calls.append("means"))
    monkeypatch.setattr(find, "train_mask", lambda *args, **kwargs: calls.append("mask"))
    with pytest.raises(find.TargetUnreachable, match=r"lowest target it allows is 0\.\d{3} \(--target-loss\)"):
        prune(run, str(task), tmp_path / "c", PruneSettings(target_loss=0.001), show_progress=False)
    assert calls == [] and not (tmp_path / "c").exists()


def test_prune_refuses_a_task_the_empty_circuit_already_does_before_training_a_mask(task_run, tmp_path, monkeypatch):
    """Every prompt ends in `True`, whose next token the bigram path answers against a byte the corpus never holds."""
    from sparsecircuits.circuits import find
    from sparsecircuits.circuits.prune import PruneSettings, prune

    run, _ = task_run
    task = tmp_path / "bigram.jsonl"
    records = [{"prompt": f"def f{i}(x):\n    {head} True", "correct": answer, "incorrect": "~"}
               for i in range(100) for head, answer in (("while", ":"), ("return", "\n"))]
    task.write_text("".join(json.dumps(r) + "\n" for r in records))
    trained = []
    monkeypatch.setattr(find, "train_mask", lambda *args, **kwargs: trained.append(1))
    with pytest.raises(find.EmptyCircuitSuffices, match="nothing to prune; a target below"):
        prune(run, str(task), tmp_path / "c", PruneSettings(target_loss=0.65), show_progress=False)
    assert trained == [] and not (tmp_path / "c").exists()


def test_search_keeps_the_smallest_circuit_that_meets_the_target(task_run, tmp_path):
    from sparsecircuits.circuits import Circuit
    from sparsecircuits.circuits.prune import PruneSettings, prune

    run, task = task_run
    circuit = prune(run, str(task), tmp_path / "searched", PruneSettings(target_loss=0.6, steps=30, calibration_steps=4),
                    search_trials=3, show_progress=False)
    assert circuit.data["search_trials"] == 3
    assert circuit.metrics["loss_choose"] <= 0.6
    settings = circuit.data["settings"]
    assert settings["steps"] == 30 and 1e-4 <= settings["k_coef"] <= 3e-2
    assert Circuit.load(tmp_path / "searched").nodes == circuit.nodes


def test_no_record_that_chose_the_node_count_is_in_the_reported_loss(circuit_dir, task_run):
    from sparsecircuits.tasks.records import SPLITS, load_task_splits

    _, task_path = task_run
    circuit = Circuit.load(circuit_dir)
    model = circuit.load_model()
    splits = load_task_splits(str(task_path), model.tokenizer)
    prompts = {split: {tuple(p) for p in splits[split].prompts} for split in SPLITS}
    assert not (prompts["train"] & prompts["choose"] or prompts["train"] & prompts["test"] or prompts["choose"] & prompts["test"])
    with circuit.only(model):
        chosen_on = float(task_loss(pair_logits(model, splits.choose)))
        reported = float(task_loss(pair_logits(model, splits.test)))
    assert abs(chosen_on - circuit.metrics["loss_choose"]) < 1e-4 and chosen_on <= circuit.data["target_loss"]
    assert abs(reported - circuit.metrics["loss_circuit"]) < 1e-4
    assert circuit.data["records"]["choose"] == len(splits.choose) and circuit.data["records"]["test"] == len(splits.test)


def test_shuffled_label_control_that_fits_the_target_is_reported_and_flagged(task_run):
    """Pruning can fit nonsense: a masked set fits shuffled labels better than the whole model. The
    control must report the target reached with its (small) node count, and flag the circuit."""
    from sparsecircuits.circuits.circuit import ablation_values, load_task_splits
    from sparsecircuits.circuits.find import PruneSettings, find_circuit
    from sparsecircuits.circuits.validate import controls, fitting_controls, shuffled_labels
    from sparsecircuits.rundir import Run
    from sparsecircuits.tasks.records import TaskSplits

    run_dir, task = task_run
    run = Run.open(run_dir)
    model = run.model()
    splits = load_task_splits(model, str(task))
    means = ablation_values(model, run, "mean", show_progress=False)
    # a fixed penalty and no margin, so the mask trained again for the target found below is the same mask
    settings = PruneSettings(target_loss=0.01, steps=60, calibration_steps=4, penalty="fixed", k_coef=3e-3,
                             choose_margin=0.0)
    shuffled = shuffled_labels(splits.train, seed=settings.seed)
    nonsense = TaskSplits(shuffled, shuffled, shuffled_labels(splits.test, seed=settings.seed + 1))
    best = find_circuit(model, nonsense, means, settings, show_progress=False, require_target=False)
    assert not best["reached"] and best["loss_choose"] < best["full_loss"]  # fits better than the whole model
    settings.target_loss = best["loss_choose"] + 1e-6  # a target only the masked set reaches
    fitted = fitting_controls(model, splits, means, settings, show_progress=False)
    fake = fitted["control_shuffled"]
    total = sum(model.node_sites.values())
    assert fake["reached_target"] and fake["n_nodes"] < total and fake["loss_fitted"] <= settings.target_loss
    assert fake["loss_fitted"] < fake["full_model_loss_fitted"]
    result = {"target_loss": settings.target_loss, "n_nodes": 1, "loss_random_same_size": 0.7, "loss_empty_circuit": 0.7,
              **fitted}
    verdict = controls(result)["shuffled_labels"]
    real = fitted["control_real_fitted"]["n_nodes"]
    assert verdict["passed"] == (fake["n_nodes"] > 2 * max(real, 1)), verdict
    result["control_real_fitted"] = {**fitted["control_real_fitted"], "n_nodes": fake["n_nodes"]}
    assert not controls(result)["shuffled_labels"]["passed"]  # a comparable count: not evidence
    result["loss_empty_circuit"] = settings.target_loss / 2
    assert "needs no nodes" in controls(result)["empty_circuit"]["why"]


def test_a_cached_circuit_is_reused_only_for_the_same_records_and_settings(task_run, tmp_path):
    from sparsecircuits.circuits import PruneSettings
    from sparsecircuits.circuits.prune import is_current, prune_or_reuse

    run, task = task_run
    records = tmp_path / "task.jsonl"
    records.write_text(task.read_text())
    settings = PruneSettings(target_loss=0.66, steps=20, calibration_steps=4)
    out = tmp_path / "cached"
    first = prune_or_reuse(run, str(records), out, settings, show_progress=False)
    stamp = (out / "circuit.json").stat().st_mtime_ns
    assert is_current(out, run, str(records), settings)
    assert prune_or_reuse(run, str(records), out, settings, show_progress=False).nodes == first.nodes
    assert (out / "circuit.json").stat().st_mtime_ns == stamp  # reused, not pruned again

    assert not is_current(out, run, str(records), PruneSettings(target_loss=0.66, steps=21, calibration_steps=4))
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines[2:] + lines[:2]) + "\n")  # the same records, dealt to other splits
    assert not is_current(out, run, str(records), settings)
    again = prune_or_reuse(run, str(records), out, settings, show_progress=False)
    assert (out / "circuit.json").stat().st_mtime_ns != stamp
    assert again.data["records_sha256"] != first.data["records_sha256"]


def test_gradients_at_sites_match_a_finite_difference(task_run):
    from sparsecircuits.rundir import Run

    model = Run.open(task_run[0]).model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 12))
    site = "0.mlp.post_act"
    logits, cache, grads = model.run_with_cache(tokens, [site, "1.resid_in"], backward=lambda out: out[:, -1, 5].sum())
    assert set(grads) == {site, "1.resid_in"} and grads[site].shape == cache[site].shape
    torch.testing.assert_close(logits, model(tokens), rtol=0, atol=0)  # the zero added at each site changes nothing
    assert all(p.grad is None for p in model.parameters())
    # nudge one active unit: the logit moves by the gradient times the nudge
    batch, position, unit = (cache[site] != 0).nonzero()[0].tolist()
    nudge = torch.zeros_like(cache[site])
    nudge[batch, position, unit] = 1e-2
    with torch.no_grad(), model.hooks({site: lambda x, s: x + nudge}):
        moved = model(tokens)[:, -1, 5].sum() - logits[:, -1, 5].sum()
    assert abs(float(moved) - 1e-2 * float(grads[site][batch, position, unit])) < 1e-4


def test_attribution_patching_prunes_a_circuit_that_is_validated_like_any_other(task_run, tmp_path, capsys):
    run, task = task_run
    main(["prune", str(run), "--task", str(task), "--out", str(tmp_path / "a"), "--method", "attribution",
          "--target-loss", "0.66"])
    circuit = Circuit.load(tmp_path / "a")
    assert circuit.data["settings"]["method"] == "attribution" and 0 < circuit.metrics["n_nodes"]
    assert "attribution" in circuit.metrics["seconds_by_stage"] and circuit.metrics["loss_choose"] <= 0.66
    result = validate(tmp_path / "a", control=False, show_progress=False)
    assert result["loss_circuit"] == circuit.metrics["loss_circuit"]
    with pytest.raises(SystemExit):
        main(["prune", str(run), "--task", str(task), "--out", str(tmp_path / "b"), "--method", "attribution",
              "--search", "2"])
    assert "drop them with --method attribution" in capsys.readouterr().err


def test_batches_grouped_by_prompt_width_give_the_same_logits_with_less_padding(task_run, monkeypatch):
    from sparsecircuits.tasks import records
    from sparsecircuits.tasks.records import TokenizedTask

    widths = [5] * 100 + [40] * 10 + [6] * 20
    task = TokenizedTask("t", "test", [[1] * w for w in widths], torch.zeros(len(widths), dtype=torch.long),
                         torch.ones(len(widths), dtype=torch.long), 0, 0)
    groups = task.width_groups()
    assert sorted(i for g in groups for i in g) == list(range(len(widths)))
    assert [sorted({widths[i] for i in g}) for g in groups] == [[5, 6], [40]]  # the few wide prompts apart
    padded = sum(len(g) * max(widths[i] for i in g) for g in groups)
    assert padded < 0.3 * len(widths) * max(widths)
    assert task.width_groups([0, 1, 2]) == [[0, 1, 2]] and task.width_groups([]) == []

    run, task_path = task_run
    from sparsecircuits.rundir import as_run

    model = as_run(run).model()
    real = load_task(str(task_path), model.tokenizer, "test")
    real.prompts = [p[-(1 + i % 5) * 3:] or p for i, p in enumerate(real.prompts)]  # widths 3 to 15
    grouped = pair_logits(model, real)
    assert len(real.width_groups()) > 1
    monkeypatch.setattr(records, "MAX_GROUPS", 1)
    assert len(real.width_groups()) == 1
    assert torch.allclose(grouped, pair_logits(model, real), atol=1e-5)


def test_prune_with_edges_keeps_both_circuits_and_the_edge_circuit_within_the_node_circuit(task_run, tmp_path, capsys):
    run, task = task_run
    out = tmp_path / "edges"
    main(["prune", str(run), "--task", str(task), "--out", str(out), "--steps", "40", "--target-loss", "0.6", "--edges"])
    printed = capsys.readouterr().out
    circuit = Circuit.load(out)
    node, edge = circuit.data, circuit.data["edge_circuit"]
    key = lambda e: (e["src"]["site"], e["src"]["index"], e["dst"]["site"], e["dst"]["index"])
    weights = lambda c: {key(e) for e in c["edges"] if e["kind"] == "weight"}
    assert weights(edge) <= weights(node) and edge["metrics"]["n_edges"] == len(weights(edge))
    assert edge["metrics"]["weight_edges_before"] == node["metrics"]["n_edges"]
    assert {(n["site"], n["index"]) for n in edge["nodes"]} <= {(n["site"], n["index"]) for n in node["nodes"]}
    assert edge["metrics"]["loss_choose"] <= 0.6 or not edge["metrics"]["reached"]
    assert f"edge circuit: {edge['metrics']['n_nodes']} nodes, {edge['metrics']['n_edges']} weight edges" in printed
    m = node["metrics"]  # the random draws (each with a fitted logit scale) beside the calibrated circuit
    assert (f"with fitted logit scales: circuit {m['loss_circuit_calibrated']:.4f}, random same size"
            f" {m['loss_random_same_size']:.4f}") in printed
    assert circuit.data["settings"]["edges"] is True


def test_cleanup_writes_its_checks_beside_the_circuit_and_names_droppable_nodes(circuit_dir, capsys):
    main(["cleanup", str(circuit_dir)])
    printed = capsys.readouterr().out
    result = json.loads((circuit_dir / "cleanup.json").read_text())
    circuit = Circuit.load(circuit_dir)
    assert len(result["nodes"]) == len(circuit.nodes) and abs(result["loss_circuit"] - circuit.metrics["loss_circuit"]) < 1e-4
    assert {n["site"] + str(n["index"]) for n in result["droppable"]} == {
        n["site"] + str(n["index"]) for n in result["nodes"] if n["cost_dropped"] < result["drop_threshold"]}
    assert "nodes whose removal costs less than" in printed and "wrote" in printed


def test_paths_writes_the_paths_beside_the_circuit_and_they_carry_the_first_order_difference(circuit_dir, capsys):
    main(["paths", str(circuit_dir), "--top", "2"])
    printed = capsys.readouterr().out
    result = json.loads((circuit_dir / "paths.json").read_text())["node"]
    assert "node circuit: logit difference" in printed and "wrote" in printed
    assert len([line for line in printed.splitlines() if line.startswith("  +") or line.startswith("  -")]) <= 2
    # every path ends at the answer and starts where something enters a kept node
    nodes = {f"{n['site']}:{n['index']}" for n in Circuit.load(circuit_dir).nodes}
    assert all(p["nodes"][0] in ("tokens", "offset") and p["nodes"][-1] == "answer" and set(p["nodes"][1:-1]) <= nodes
               for p in result["paths"] + result["against"])
    # the paths carry together all that enters the nodes (which sums to the writes' flow into the answer),
    # less the partial paths too weak to follow
    entering = sum(n["enters"] for n in result["nodes"].values())
    assert abs(result["paths_sum"] - entering) <= result["unfollowed"] + 1e-6
    assert result["delta"] == pytest.approx(result["logit_diff"] - result["logit_diff_empty"])
