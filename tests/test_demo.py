"""`demo` end to end on tiny models: report, circuit pages and plots exist and agree with the circuits."""

import json
import re

import pytest

from sparsecircuits.experiments.demo import demo
from sparsecircuits.experiments.budget import NO_DENSE
from sparsecircuits.experiments.report import render_report
from tests.conftest import write_idiom_corpus

TINY = ["model.ctx_len=64", "train.steps=300", "train.batch_size=8", "optim.grad_clip=normalize", "optim.lr=0.01"]


def write_unflagged_lambda_task(path, n_pairs=200):
    """The fixture corpus's lambda-or-def contrast with the same 0 to 2 function definitions above both
    prompts of a pair: no audit flags it (the fixture's own lambda task is flagged), so claim (a) has a task."""
    import random

    from sparsecircuits.tasks.builtin import FUNCS, NAMES

    rng, records = random.Random(0), []
    for _ in range(n_pairs):
        f, x = rng.sample(NAMES + FUNCS, 2)
        head = "".join(f"def {g}({y}):\n    return {y}\n" for g, y in (rng.sample(NAMES + FUNCS, 2) for _ in range(rng.randint(0, 2))))
        records += [{"prompt": f"{head}{f} = lambda {x}", "correct": ":", "incorrect": "("},
                    {"prompt": f"{head}def {x}", "correct": "(", "incorrect": ":"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_demo_on_tiny_models(tmp_path, task_run):
    _, task = task_run
    corpus = write_idiom_corpus(tmp_path / "corpus")
    out = tmp_path / "demo"
    loop = write_unflagged_lambda_task(tmp_path / "shared.jsonl")
    summary = demo(out, tasks=[str(task), str(loop)], target_loss=0.68, config="tiny", overrides=TINY, corpus=[str(corpus)],
                   control=False, margin=1.0, dense_set=["train.log_interval=7"], claim_targets=(0.68,), claim_seeds=2)
    assert (out / "report.html").is_file() and (out / "edges.png").stat().st_size > 1000
    assert (out / "claim.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["circuits"] == summary["circuits"]
    assert set(summary["circuits"]) == {"lambda", "shared"}
    report = (out / "report.html").read_text()
    assert render_report(json.loads((out / "summary.json").read_text())) == report  # the report is the summary's
    pages = re.findall(r"href='([^']+)'", report)
    assert len(pages) == 3 and all((out / page).is_file() for page in pages)
    # the smallest circuit, pruned again at each of the 4 models the sparse run kept
    evolution = summary["evolution"]
    assert evolution["task"] in ("lambda", "shared") and evolution["page"] in pages and (out / evolution["plot"]).is_file()
    assert [r["step"] for r in evolution["checkpoints"]] == [75, 150, 225, 300]
    assert evolution["checkpoints"][-1]["reached"]
    circuit = json.loads((out / "circuits" / "sparse" / "lambda" / "circuit.json").read_text())
    row = summary["circuits"]["lambda"]
    assert row["nodes"] == circuit["metrics"]["n_nodes"] and row["edges"] == circuit["metrics"]["n_edges"]
    # each circuit's edges pruned too, unless the plan said that would cost circuits
    assert (row["edge_circuit"] is None) == any("no edge pruning" in line for line in summary["cuts"])
    assert row["edge_circuit"] is None or row["edge_circuit"]["n_edges"] <= row["edges"]
    assert f">{row['nodes']}</a>" in report
    # the paths that carry the answer, which `view` wrote beside the page, in the summary and the report
    paths = json.loads((out / "circuits" / "sparse" / "lambda" / "paths.json").read_text())
    assert row["paths"]["node"] == {k: paths["node"][k] for k in ("delta", "n_paths", "top3_share")}
    assert f"{row['paths']['node']['top3_share']:.0%} of {row['paths']['node']['delta']:.2f}" in report
    assert set(row["controls"]) == {"random_nodes", "empty_circuit"}  # control=False: no pruning controls
    baseline = json.loads((out / "circuits" / "sparse-attribution" / "lambda" / "circuit.json").read_text())
    assert baseline["settings"]["method"] == "attribution" and row["attribution"]["edges"] == baseline["metrics"]["n_edges"]
    dense_config = json.loads((out / "dense" / "config.json").read_text())
    assert dense_config["sparsity"]["l0_fraction"] == 1.0 and dense_config["model"]["keep_fraction"] == 0.25
    sparse_config = json.loads((out / "sparse" / "config.json").read_text())
    assert dense_config["train"]["log_interval"] == 7 != sparse_config["train"]["log_interval"]  # --dense-set
    assert dense_config["train"]["steps"] == sparse_config["train"]["steps"]  # the same tokens, a full schedule
    if summary["dense_matched_steps"] is not None:  # a finished schedule as long as dense took to match
        matched = json.loads((out / "dense_matched" / "config.json").read_text())
        assert matched["train"]["steps"] == summary["dense_matched_steps"] <= dense_config["train"]["steps"]
    bracket = summary["dense_at_sparse_loss"]
    if bracket is not None:  # finished dense schedules tried until two bracket the sparse model's loss
        sparse_loss, tried = summary["models"]["sparse"]["val_loss"], bracket["tried"]
        assert "dense_matched" in tried and set(bracket["models"]) <= set(tried) <= set(summary["models"])
        if bracket["bracketed"]:
            assert sorted(tried[m]["val_loss"] <= sparse_loss for m in bracket["models"]) == [False, True]
    assert summary["claim"]["dense"][0]["count"] >= 1 and "lambda" in summary["claim"]["dense"][0]["excluded"]
    for dense, per_target in summary["claim"].items():
        assert [c["target_loss"] for c in per_target] == [0.68]
        for task, r in per_target[0]["tasks"].items():  # each side the smallest of its seeds that meets the target
            found = {m: [json.loads((out / "circuits" / f"{m}{s}" / task / "circuit.json").read_text())["metrics"]
                         for s in ("", "-seed1")] for m in ("sparse", *(["dense"] if dense == "dense" else []))}
            best = {m: min(x["n_edges"] for x in found[m] if x["loss_choose"] <= 0.68) for m in found}
            assert r["sparse_edges"] == best["sparse"] <= summary["circuits"][task]["edges"]
            if dense == "dense":
                assert r["dense_edges"] == best["dense"]
            else:  # interpolated between the bracketing models' best circuits
                low, high = sorted(min(x["n_edges"] for x in [json.loads((out / "circuits" / f"{m}{s}" / task / "circuit.json")
                                   .read_text())["metrics"] for s in ("", "-seed1")] if x["reached"]) for m in per_target[0]["baseline"])
                assert low * 0.999 <= r["dense_edges"] <= high * 1.001
    # A second call finds every stage done and changes nothing.
    before = (out / "circuits" / "sparse" / "lambda" / "circuit.json").stat().st_mtime
    demo(out, tasks=[str(task), str(loop)], target_loss=0.68, config="tiny", overrides=TINY, corpus=[str(corpus)],
         control=False, margin=1.0, dense_set=["train.log_interval=7"], claim_targets=(0.68,), claim_seeds=2)
    assert (out / "circuits" / "sparse" / "lambda" / "circuit.json").stat().st_mtime == before


def test_a_demo_whose_models_share_no_task_still_prunes_and_draws_the_sparse_circuits(tmp_path, task_run):
    """A dense model that learns nothing does no task: the sparse model's circuit is still pruned,
    validated and drawn, and the report says in words that claim (a) has no task."""
    _, task = task_run
    corpus = write_idiom_corpus(tmp_path / "corpus")
    out = tmp_path / "demo"
    summary = demo(out, tasks=[str(task)], target_loss=0.68, config="tiny", overrides=TINY, corpus=[str(corpus)],
                   control=False, margin=1.0, dense_set=["optim.lr=1e-9"], claim_targets=(0.68,), claim_seeds=1)
    assert set(summary["circuits"]) == {"lambda"} and (out / "circuits" / "sparse" / "lambda" / "circuit.html").is_file()
    assert summary["dense_matched_steps"] is None and "dense_matched" not in summary["models"]
    per_target = summary["claim"]["dense"]
    assert per_target[0]["count"] == 0 and "dense loss" in per_target[0]["excluded"]["lambda"]
    report = (out / "report.html").read_text()
    assert "no task every model does with margin" in report and "nan" not in report.lower()
    assert "n/a" not in report.split("<h2>Task losses")[0] or "lambda" in report


def seeds(*edges, nodes=10, evidence=True):
    """A task's circuits over pruning seeds: each an edge count, or None for a seed that missed the target."""
    return [{"seed": i, "edges": e or 999, "nodes": nodes, "reached": e is not None, "evidence": evidence,
             "why": [] if evidence else ["not necessary"]} for i, e in enumerate(edges)]


def test_claim_a_chooses_tasks_on_choose_records_keeps_the_best_seed_and_reports_evidence():
    from sparsecircuits.experiments.claim import claim_rows, claim_tasks

    losses = {"sparse": {"a": 0.02, "b": 0.05, "c": 0.01, "d": None, "e": 0.01},
              "dense": {"a": 0.07, "b": 0.125, "c": 0.01, "d": 0.0, "e": 0.01}}
    chosen, excluded = claim_tasks(losses, {"e": ["last_token"]}, target=0.15)
    assert chosen == ["a", "c"]
    assert excluded == {"b": "dense loss 0.125 > 0.075", "d": "sparse loss n/a > 0.075",
                        "e": "flagged by `tasks audit` (last_token)"}
    assert claim_tasks(losses, {}, target=0.3)[0] == ["a", "b", "c", "e"]  # margin 0.15 at target 0.3
    circuits = {"sparse": {"a": seeds(12, 10, None), "c": seeds(20, 30, 25), "f": seeds(None, None, None)},
                "dense": {"a": seeds(40, None, 60), "c": seeds(50, 55, 45, evidence=False), "f": seeds(9, 9, 9)}}
    rows = claim_rows(circuits, "sparse", {"dense": 3.0}, 3.1, 0.15)
    assert list(rows["tasks"]) == ["a", "c"] and "no pruning seed meets the target" in rows["excluded"]["f"]
    assert rows["tasks"]["a"]["sparse_edges"] == 10 and rows["tasks"]["a"]["dense_edges"] == 40  # the best seed each
    assert rows["tasks"]["a"]["ratio_over_seeds"] == [pytest.approx(40 / 12), pytest.approx(40 / 12)]  # seed 0 only
    assert rows["tasks"]["c"]["ratio_over_seeds"] == [pytest.approx(45 / 25), pytest.approx(50 / 20)]
    assert rows["edges_ratio_geomean"] == pytest.approx((4.0 * 45 / 20) ** 0.5) and rows["not_evidence"] == ["c"]
    # what the test records say (evidence, test losses) never changes which tasks count
    for found in circuits["dense"]["a"] + circuits["sparse"]["c"]:
        found.update(evidence=not found["evidence"], why=["changed"], loss_test=0.69)
    again = claim_rows(circuits, "sparse", {"dense": 3.0}, 3.1, 0.15)
    assert list(again["tasks"]) == list(rows["tasks"]) and again["edges_ratio_geomean"] == rows["edges_ratio_geomean"]


def test_the_plan_counts_claim_a_tasks_per_comparison_not_over_every_dense_model_at_once():
    """The full dense model does five tasks with the sparse one; the bracketing models only two: the
    comparison with the full model draws five, so the budget must not cut it to the two all share."""
    from sparsecircuits.experiments.claim import claimed_tasks

    tasks = [f"t{i}" for i in range(5)]
    losses = {"sparse": {t: 0.01 * (i + 1) for i, t in enumerate(tasks)}, "dense": dict.fromkeys(tasks, 0.01),
              "low": {t: 0.01 if i < 2 else 0.5 for i, t in enumerate(tasks)}, "high": {t: 0.01 if i < 3 else 0.5 for i, t in enumerate(tasks)}}
    baselines = {"dense_at_sparse_loss": {"low": 3.4, "high": 3.5}, "dense": {"dense": 3.0}}
    most, claimed = claimed_tasks(losses, {}, baselines, [0.15, 0.3])
    assert most == 5 and claimed == tasks
    assert claimed_tasks(losses, {"t0": ["last token"]}, baselines, [0.15]) == (4, tasks[1:])


def test_claim_a_interpolates_the_dense_size_between_models_that_bracket_the_sparse_loss():
    from sparsecircuits.experiments.claim import claim_rows, interpolate_log

    assert interpolate_log([(3.0, 100), (3.2, 1000)], 3.1) == pytest.approx(10 ** 2.5)
    assert interpolate_log([(3.0, 100)], 3.1) == 100
    circuits = {"sparse": {"a": seeds(10)}, "short": {"a": seeds(1000)}, "long": {"a": seeds(100)}}
    rows = claim_rows(circuits, "sparse", {"long": 3.0, "short": 3.2}, 3.15, 0.15)
    assert rows["tasks"]["a"]["dense_edges"] == pytest.approx(10 ** 2.75) and rows["count"] == 1


def test_the_demo_plans_its_whole_budget_and_cuts_what_does_not_fit(tmp_path, task_run, capsys):
    """--minutes bounds the whole run: the plan's shares sum to the budget, the circuit stages are cut
    (each cut said and listed) to what is left after training, the stages end within the budget
    (uncut, this demo takes several times as long), and a resumed run keeps its plan (planned again
    for another budget, it prices the models it trained at nothing)."""
    _, task = task_run
    corpus = write_idiom_corpus(tmp_path / "corpus")
    loop = write_unflagged_lambda_task(tmp_path / "shared.jsonl")
    minutes = 1.5
    run = lambda: demo(tmp_path / "demo", minutes=minutes, tasks=[str(task), str(loop)], target_loss=0.68, config="tiny",
                       overrides=TINY, corpus=[str(corpus)], control=False, margin=1.0, claim_targets=(0.68, 0.6), claim_seeds=3)
    summary = run()
    err = capsys.readouterr().err
    plan = summary["plan"]
    assert sum(plan["initial"].values()) == pytest.approx(minutes * 60, abs=0.5)  # as first planned
    assert summary["cuts"] and all(f"cut to fit --minutes {minutes:g}: {c}" in err for c in summary["cuts"])
    assert "planned against actual" in err and sum(summary["seconds_by_stage"].values()) <= 1.2 * minutes * 60
    assert ("dense" in summary["models"]) == (NO_DENSE not in summary["cuts"])
    assert plan["scope"]["steps"] == json.loads((tmp_path / "demo" / "sparse" / "config.json").read_text())["train"]["steps"]
    again = run()
    assert "resuming with the plan" in capsys.readouterr().err
    assert again["plan"] == plan and again["cuts"] == summary["cuts"] and again["circuits"] == summary["circuits"]
    # resumed with another budget: planned again, with the models already trained priced at nothing
    trained = [m for m in ("sparse", "dense", "dense_matched") if m in summary["models"]]
    replanned = demo(tmp_path / "demo", minutes=minutes / 3, tasks=[str(task), str(loop)], target_loss=0.68, config="tiny",
                     overrides=TINY, plan_only=True)
    stage = {"sparse": "train sparse model", "dense": "train dense model", "dense_matched": "train loss-matched dense model"}
    assert trained and all(replanned["plan"]["initial"][stage[m]] == 0 for m in trained)
    assert replanned["plan"]["scope"]["steps"] == plan["scope"]["steps"]


def test_the_plan_cuts_claim_tasks_then_targets_then_seeds_and_drops_the_dense_models_it_cannot_use():
    """The planner on fixed rates (no timing): a generous budget cuts nothing and its shares sum to it;
    tighter ones cut claim (a)'s tasks to two, then its targets, then a task, then its seeds; when not even one claim
    circuit fits, no dense model trains and the sparse model keeps the config's steps; resumed with
    its models trained, the same budget prices no training and keeps them."""
    from dataclasses import replace

    from sparsecircuits.experiments.budget import NO_DENSE, TRAINING, Rates, Scope, estimates, make_plan

    rates = Rates(sparse_step=0.2, dense_step=0.17, mask_step_sparse=0.3, mask_step_dense=0.3)  # `small` on this machine
    wanted = lambda: Scope(steps=3000, tasks=6, evolve=True, claim_targets=[0.15, 0.075, 0.3, 0.5], claim_seeds=3,
                           claim_tasks=4, claim_dense_models=3, control=True, candidates=20, models=5)
    full = make_plan(10 * 3600, rates, 300, wanted(), 30.0)
    assert full.cuts == {} and sum(full.initial.values()) == pytest.approx(10 * 3600, abs=1)
    others = sum(v for n, v in full.initial.items() if n != "claim (a)")

    def budget_for(**claim) -> float:  # a budget that just holds claim (a) at this scope
        return others + estimates(replace(full.scope, **claim), rates, 300, 30.0)["claim (a)"] + 1

    scope_of = lambda plan: (plan.scope.claim_seeds, plan.scope.claim_targets, plan.scope.claim_tasks)
    two_tasks = make_plan(budget_for(claim_tasks=2), rates, 300, wanted(), 30.0)
    assert scope_of(two_tasks) == (3, [0.15, 0.075, 0.3, 0.5], 2)
    assert sum(two_tasks.initial.values()) == pytest.approx(two_tasks.budget_s, abs=1)
    two_targets = make_plan(budget_for(claim_tasks=2, claim_targets=[0.15, 0.075]), rates, 300, wanted(), 30.0)
    assert scope_of(two_targets) == (3, [0.15, 0.075], 2)
    one_task = make_plan(budget_for(claim_tasks=1, claim_targets=[0.15]), rates, 300, wanted(), 30.0)
    assert scope_of(one_task) == (3, [0.15], 1)
    two_seeds = make_plan(budget_for(claim_seeds=2, claim_tasks=1, claim_targets=[0.15]), rates, 300, wanted(), 30.0)
    assert scope_of(two_seeds) == (2, [0.15], 1)
    assert all(f"{p.scope.claim_seeds} pruning seeds (of 3)" in p.cuts["claim"] for p in (two_tasks, two_targets, one_task, two_seeds))
    short = make_plan(20 * 60, rates, 300, wanted(), 30.0)
    assert short.cuts["dense"] == NO_DENSE and not short.scope.dense and short.scope.steps == 3000
    assert short.initial["train dense model"] == 0 and short.scope.tasks >= 1
    # the same budget on a resumed run whose models are trained: nothing of training priced, the dense models kept
    resumed = make_plan(20 * 60, rates, 300, wanted(), 0.0, done=TRAINING)
    assert "dense" not in resumed.cuts and resumed.scope.dense and resumed.scope.claim_tasks >= 1
    assert all(resumed.initial[stage] == 0 for stage in TRAINING) and resumed.initial["claim (a)"] > 0


def test_bracketing_halves_or_doubles_the_schedule_until_two_models_straddle_the_sparse_loss_then_bisects():
    from sparsecircuits.experiments.demo import bracket_sparse_loss

    loss_at = lambda steps: 3.0 + 400 / steps  # a finished schedule of more steps ends lower
    trained = []
    val = lambda name: loss_at(1000 if name == "dense_matched" else int(name.removeprefix("dense_steps")))
    bracket = lambda sparse_val: bracket_sparse_loss(lambda name, steps: trained.append(steps), 1000, sparse_val, val)
    # 1000 steps end at 3.4, below 3.7; 500 at 3.8, above; then sqrt(1000 x 500) = 707 ends at 3.566 (below,
    # 0.13 from 3.7) and sqrt(707 x 500) = 595 at 3.672: the nearest on each side are 595 and 500
    result = bracket(3.7)
    assert trained == [500, 707, 595] and result["bracketed"]
    assert result["models"] == {"dense_steps595": pytest.approx(loss_at(595)), "dense_steps500": pytest.approx(3.8)}
    trained.clear()
    result = bracket(4.0)
    assert trained == [500, 250, 354] and set(result["models"]) == {"dense_steps500", "dense_steps354"}  # 3.8 | 4.13
    trained.clear()
    result = bracket(3.3)
    assert trained == [2000, 1414, 1189] and set(result["models"]) == {"dense_steps1414", "dense_steps1189"}
    trained.clear()
    result = bracket(3.45)  # 1000 steps end 0.05 below; 841 (after 500 and 707) 0.026 above: close enough on both sides
    assert trained == [500, 707, 841] and set(result["models"]) == {"dense_matched", "dense_steps841"}
    trained.clear()
    result = bracket(3.38)  # 1000 steps end 0.02 above, 2000 0.18 below, 1414 0.097 below, 1189 0.044 below
    assert trained == [2000, 1414, 1189] and set(result["models"]) == {"dense_matched", "dense_steps1189"}
    trained.clear()
    never = bracket(2.0)  # always above
    assert trained == [2000, 4000, 8000] and not never["bracketed"] and list(never["models"]) == ["dense_steps8000"]


def test_ratio_statistics_give_an_interval_a_median_and_what_one_task_does():
    from sparsecircuits.experiments.claim import ratio_statistics

    stats = ratio_statistics({"a": 2.0, "b": 2.0, "c": 2.0, "d": 16.0})
    assert stats["geomean"] == pytest.approx(128 ** 0.25) and stats["median"] == pytest.approx(2.0)
    assert stats["interval"][0] <= 2.0 + 1e-9 < stats["geomean"] < stats["interval"][1] <= 16.0
    assert stats["leave_one_out"]["min"] == pytest.approx(2.0) and stats["leave_one_out"]["by_task"]["d"] == pytest.approx(2.0)
    assert stats["leave_one_out"]["max"] == pytest.approx((2 * 2 * 16) ** (1 / 3))
    assert ratio_statistics({})["geomean"] is None and ratio_statistics({"a": 3.0})["leave_one_out"] is None


def test_demo_compare_and_sweep_apply_one_margin_rule(tmp_path, task_run):
    from sparsecircuits.cli import main
    from sparsecircuits.errors import SparseCircuitsError
    from sparsecircuits.experiments import claim, compare, demo as demo_module, sweep

    assert compare.does_with_margin is claim.does_with_margin is sweep.does_with_margin is demo_module.does_with_margin
    run, task = task_run
    with pytest.raises(SystemExit):  # the fixture does its task to about 0.3: not within 0.5 x 0.5
        main(["compare", str(run), str(run), "--out", str(tmp_path / "c"), "--tasks", str(task), "--targets", "0.5",
              "--keep-flagged"])
    with pytest.raises(SparseCircuitsError, match="loss <= 0.5 x any target"):
        compare.compare(run, run, tmp_path / "c", tasks=[str(task)], targets=(0.5,), keep_flagged=True, show_progress=False)


def test_compare_and_sweep_leave_out_a_task_the_audit_flags(tmp_path, task_run, capsys):
    """The fixture's task is answered by the prompt's length (its lambda prompts are the longer ones):
    done with margin, it is still left out of compare and of the sweep, as it is of the demo's claim (a)."""
    from sparsecircuits.errors import SparseCircuitsError
    from sparsecircuits.experiments import compare, sweep
    from sparsecircuits.tasks.audit import audit_task
    from sparsecircuits.rundir import Run

    run, task = task_run
    cues = audit_task(str(task), Run.open(run).model())["flagged"]
    assert cues[0] == "length" and "token 1 from start" in cues
    with pytest.raises(SparseCircuitsError, match="flagged by `tasks audit`, left out: lambda"):
        compare.compare(run, run, tmp_path / "c", tasks=[str(task)], targets=(0.68,), margin=1.0, show_progress=False)
    assert "left out lambda: flagged by `tasks audit` (length, token 1 from start" in capsys.readouterr().err
    assert not (tmp_path / "c" / "compare.csv").exists()
    grid = tmp_path / "grid.toml"
    grid.write_text(f'config = "tiny"\nset = {json.dumps(TINY)}\ntarget_loss = 0.99\n'  # the fixture's recipe
                    f'tasks = [{json.dumps(str(task))}]\n[grid]\nd_model = [32]\nl0_fraction = [0.25]\n')
    rows = sweep.sweep(str(grid), tmp_path / "sweep", run.parent / "data", show_progress=False)
    assert "length" in rows[0]["flagged"]["lambda"] and rows[0]["edges"] == {} and rows[0]["tasks_learned"] == 0
    assert not (tmp_path / "sweep" / "circuits").exists()


def test_compare_two_models(tmp_path, task_run, capsys):
    from sparsecircuits.cli import main

    run, task = task_run
    out = tmp_path / "cmp"
    main(["compare", str(run), str(run), "--out", str(out), "--tasks", str(task), "--targets", "0.68,0.65",
          "--margin", "1", "--keep-flagged"])  # the fixture's task is flagged (length): kept on request
    rows = (out / "compare.csv").read_text().splitlines()
    assert rows[0] == "model,task,target_loss,loss_choose,loss,loss_calibrated,nodes,edges" and len(rows) >= 3
    # each target is met on the choose records (the test loss beside it is a held-out estimate: on a
    # model this small it moves by a few hundredths with the CPU's float kernels)
    assert all(float(r.split(",")[3]) <= float(r.split(",")[2]) for r in rows[1:])
    assert all(0 < float(r.split(",")[4]) < 1.0 for r in rows[1:])
    edges = {float(r.split(",")[2]): int(r.split(",")[7]) for r in rows[1:]}
    assert edges[0.68] <= 1.1 * edges[0.65]  # a looser target needs no more edges (each target its own mask)
    assert (out / "compare.png").stat().st_size > 1000
    assert "geometric-mean edges" in capsys.readouterr().out


def test_sweep_reuses_runs_and_draws_the_frontier(tmp_path, task_run, capsys):
    from sparsecircuits.cli import main

    run, task = task_run
    data = run.parent / "data"
    grid = tmp_path / "grid.toml"
    grid.write_text(f'config = "tiny"\nset = {json.dumps(TINY[:-1] + ["train.steps=60"])}\ntarget_loss = 0.68\n'
                    f'tasks = [{json.dumps(str(task))}]\n[grid]\nd_model = [32]\nl0_fraction = [0.5, 0.25]\n')
    main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "sweep"), "--data", str(data)])
    rows = (tmp_path / "sweep" / "frontier.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("run,d_model,l0_fraction")
    assert (tmp_path / "sweep" / "frontier.png").stat().st_size > 1000
    frontier = json.loads((tmp_path / "sweep" / "frontier.json").read_text())
    assert all(set(r["seconds_by_stage"]) == {"train", "evaluate tasks", "prune"} for r in frontier)
    stamp = (tmp_path / "sweep" / "runs" / "d_model-32_l0_fraction-0.5" / "model.safetensors").stat().st_mtime
    main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "sweep"), "--data", str(data)])
    assert (tmp_path / "sweep" / "runs" / "d_model-32_l0_fraction-0.5" / "model.safetensors").stat().st_mtime == stamp
    with pytest.raises(SystemExit):
        main(["sweep", "--grid", "nope", "--out", str(tmp_path / "x")])
    assert "grid not found" in capsys.readouterr().err


def test_grid_over_nonzero_count_gives_each_width_the_same_nonzeros(tmp_path):
    from sparsecircuits.config import load_config
    from sparsecircuits.errors import SparseCircuitsError
    from sparsecircuits.experiments.sweep import grid_runs, read_grid, sparse_weight_count

    path = tmp_path / "grid.toml"
    path.write_text('config = "tiny"\n[grid]\nd_model = [32, 64]\nl0_nonzeros = [20000]\n')
    runs = grid_runs(read_grid(str(path)), vocab_size=320)
    assert [tag for tag, _ in runs] == ["d_model-32_l0_nonzeros-20000", "d_model-64_l0_nonzeros-20000"]
    fractions = []
    for _, overrides in runs:
        config = load_config("tiny", overrides + ["model.vocab_size=320"])
        fractions.append(config.sparsity.l0_fraction)
        assert abs(config.sparsity.l0_fraction * sparse_weight_count(config) - 20000) < 1
    assert fractions[1] < fractions[0] / 2  # the wider model is sparser
    path.write_text('config = "tiny"\n[grid]\nd_model = [32]\nl0_nonzeros = [10000000]\n')
    with pytest.raises(SparseCircuitsError, match="must be between 1 and the"):
        grid_runs(read_grid(str(path)), vocab_size=320)
    path.write_text('config = "tiny"\n[grid]\nd_model = [32]\nl0_nonzeros = [1000]\nl0_fraction = [0.5]\n')
    with pytest.raises(SparseCircuitsError, match="one of l0_fraction or l0_nonzeros"):
        read_grid(str(path))


def test_compare_averages_over_the_tasks_every_model_reaches():
    from sparsecircuits.experiments.compare import geomean_edges

    rows = [{"model": "sparse", "task": "a", "target_loss": 0.1, "edges": 10},
            {"model": "dense", "task": "a", "target_loss": 0.1, "edges": 40},
            {"model": "dense", "task": "b", "target_loss": 0.1, "edges": 4000}]  # only dense reaches b
    assert geomean_edges(rows, "sparse", 0.1) == pytest.approx(10) and geomean_edges(rows, "dense", 0.1) == pytest.approx(40)
    assert geomean_edges(rows, "sparse", 0.05) is None


def test_demo_refuses_a_bad_dense_override_before_training(tmp_path, capsys):
    from sparsecircuits.cli import main

    with pytest.raises(SystemExit) as info:
        main(["demo", "--out", str(tmp_path / "demo"), "--dense-set", "model.no_such_key=1"])
    assert info.value.code == 2 and "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "data").exists() and not (tmp_path / "demo" / "sparse").exists()
