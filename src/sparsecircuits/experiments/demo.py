"""`sparsecircuits demo`: corpus -> a weight-sparse model and dense baselines -> task circuits ->
validation -> claim (a) -> report.

Every stage writes into DIR and is skipped when its output is already there, so an interrupted
demo continues where it stopped. The models:

- `sparse`: the config as given (weight-sparse);
- `dense`: the same shape and activation sparsity with dense weights, trained on the same tokens
  with its full schedule. It reaches a lower loss than the sparse model: a stronger baseline, so a
  circuit-size ratio against it is conservative;
- `dense_matched`: the same dense model trained with a finished schedule (warmup and decay to 0)
  of as many steps as the `dense` run took to reach the sparse model's validation loss. A finished
  schedule ends lower than the same step of a longer one, so it usually lands below the sparse loss;
- `dense_steps{N}`: finished schedules of other lengths (halved or doubled from `dense_matched`'s
  until two bracket the sparse model's validation loss, then bisected while either is more than
  BRACKET_CLOSE from it). Claim (a) at the sparse model's loss interpolates log edges between the
  nearest schedule on each side, the paper's comparison.

Every task the sparse model does to the target gets its circuit, validated (with all four
controls), labelled and drawn, with its loss on the task's hard forms. Claim (a) is then drawn at
each of `claim_targets` against the dense model at the sparse loss (bracketed) and the stronger
`dense`, over the tasks every model does with margin (`claim.MARGIN`) and the audit does not flag,
each circuit the best of `claim_seeds` pruning seeds; which tasks count is decided on the choose
records, and every circuit claim (a) uses is validated as the main circuits are.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from ..circuits.circuit import CIRCUIT_FILE, Circuit
from ..circuits.find import NoCircuitToFind
from ..circuits.labels import label_run, read_labels
from ..circuits.paths import PATHS_FILE
from ..circuits.prune import TARGET_LOSS, PruneSettings
from ..circuits.validate import not_evidence_reasons, read_validation
from ..circuits.workbench import Workbench
from ..config import load_config
from ..data.dataset import TokenData
from ..data.prepare import DEFAULT_VOCAB, MANIFEST, prepare
from ..io import JsonCache, atomic_write_text, output_folder
from ..rundir import METRICS_FILE, MODEL_FILE, Run, circuit_device, file_sha256, read_metrics, read_run_config
from ..tasks import HARD_FORMS, suite_tasks
from ..tasks.audit import score_tasks
from ..train.evaluation import evaluate_run
from ..train.trainer import train_or_continue
from .budget import (CLAIM_NOT_DRAWN, DEMO_MINUTES, GUESSED_CLAIM_TASKS, GUESSED_TASKS, PREPARE_SECONDS, Plan, Scope,
                     fit_circuits, fit_claim, make_plan, time_this_machine)
from .claim import (CLAIM_SEEDS, CLAIM_TARGETS, COMPARISONS, MARGIN, best_circuit, circuit_is_evidence, claim_rows,
                    claim_tasks, claimed_tasks, does_with_margin, plot_claim)
from .report import format_summary, write_report

KEPT_MODELS = 4  # models the demo's sparse run keeps for `evolve`: 4 x 22 MB on `small`
BRACKET_TRIES = 3  # finished dense schedules tried beyond dense_matched to bracket the sparse loss
BRACKET_CLOSE = 0.05  # nats: a bracketing model this near the sparse loss needs no schedule between it and the other


class Stages:
    """Prints each stage with the time spent so far and the time left against the budget."""

    def __init__(self, names: list[str], budget_s: float | None = None):
        self.names, self.budget_s, self.start = names, budget_s, time.perf_counter()
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn):
        elapsed = time.perf_counter() - self.start
        left = "" if self.budget_s is None else f", about {max(0.0, self.budget_s - elapsed) / 60:.1f} min of the budget left"
        print(f"[{self.names.index(name) + 1}/{len(self.names)}] {name}  (elapsed {elapsed / 60:.1f} min{left})",
              file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - started, 1)
        return result


def _val_losses(run_dir: Path) -> list[tuple[int, float]]:
    records = read_metrics(run_dir / METRICS_FILE)
    return [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]


def matched_steps(dense_run: Path, sparse_val: float) -> int | None:
    """The first evaluated step at which the dense run's validation loss reached the sparse model's."""
    return next((step for step, loss in _val_losses(dense_run) if loss <= sparse_val), None)


def _train_stage(config_name: str, overrides: list[str], data_dir: Path, run_dir: Path, device: str | None) -> None:
    train_or_continue(load_config(config_name, overrides), data_dir, run_dir, device=device)


def trained_before(out: Path) -> tuple[list[str], int | None]:
    """The training stages an earlier session of this run finished (a model file is written last) and
    the sparse model's steps: a plan made again for a new budget prices them at nothing and keeps the
    steps, instead of pricing (and cutting) models that are already there."""
    trained = lambda name: (out / name / MODEL_FILE).is_file()
    done = [stage for stage, name in (("train sparse model", "sparse"), ("train dense model", "dense"),
                                      ("train loss-matched dense model", "dense_matched")) if trained(name)]
    if trained("dense_matched") and any(trained(p.name) for p in out.glob("dense_steps*")):
        done.append("bracket the sparse loss")  # at most a schedule or two more, bisecting: not priced
    return done, read_run_config(out / "sparse").train.steps if trained("sparse") else None


def bracket_sparse_loss(train_dense, n_matched: int, sparse_val: float, val_loss) -> dict:
    """Finished dense schedules whose validation losses bracket the sparse model's: `dense_matched`
    (`n_matched` steps), then schedules halved (while every one tried ends below the sparse loss) or
    doubled (while every one ends above) until two straddle it, then bisected (the geometric mean of
    the nearest schedule on each side) while a side is more than BRACKET_CLOSE from the sparse loss;
    at most BRACKET_TRIES schedules beyond dense_matched. `train_dense(name, steps)` trains one;
    `val_loss(name)` scores one. Returns {"models": {name: val loss} of the nearest on each side
    (one model when none lands on the other side), "tried": every schedule's steps and loss}."""
    tried = {"dense_matched": (n_matched, val_loss("dense_matched"))}

    def nearest() -> tuple[str | None, str | None]:  # the nearest schedule ending below, and above, the sparse loss
        below = [m for m, (_, loss) in tried.items() if loss <= sparse_val]
        above = [m for m, (_, loss) in tried.items() if loss > sparse_val]
        return (max(below, key=lambda m: tried[m][1]) if below else None,
                min(above, key=lambda m: tried[m][1]) if above else None)

    for _ in range(BRACKET_TRIES):
        below, above = nearest()
        if below is None:
            steps = max(tried[m][0] for m in tried) * 2
        elif above is None:
            steps = max(1, min(tried[m][0] for m in tried) // 2)
        elif max(sparse_val - tried[below][1], tried[above][1] - sparse_val) > BRACKET_CLOSE:
            steps = round((tried[below][0] * tried[above][0]) ** 0.5)  # a loss falls about linearly in log steps
        else:
            break
        if any(steps == s for s, _ in tried.values()):
            break  # the schedules on either side are a step apart
        name = f"dense_steps{steps}"
        train_dense(name, steps)
        tried[name] = (steps, val_loss(name))
    below, above = nearest()
    chosen = [m for m in (below, above) if m]
    if len(chosen) == 1:  # nothing on the other side: the nearest model alone stands for the dense model at the sparse loss
        chosen = [min(tried, key=lambda m: abs(tried[m][1] - sparse_val))]
    return {"models": {m: tried[m][1] for m in chosen}, "bracketed": bool(below and above),
            "tried": {m: {"steps": steps, "val_loss": loss} for m, (steps, loss) in tried.items()}}


def demo(out: str | Path, minutes: float = DEMO_MINUTES, tasks: str | list[str] = "auto", max_tasks: int | None = None,
         target_loss: float = TARGET_LOSS, config: str = "small", overrides: list[str] | None = None,
         corpus: list[str] | None = None, control: bool = True, margin: float = MARGIN,
         dense_set: list[str] | None = None, suite: str = "paper",
         claim_targets: tuple[float, ...] = CLAIM_TARGETS, claim_seeds: int = CLAIM_SEEDS, plan_only: bool = False,
         device: str | None = None) -> dict:
    """`minutes` bounds the whole run (experiments/budget.py); `dense_set`: overrides for every dense
    model, after the shared ones (another width, more steps); `plan_only`: print the plan and return it;
    `device`: where every model trains and runs ('cpu', 'cuda' or 'auto'; default: training as the config
    says, train.device 'auto', and the circuits on the CPU)."""
    from ..circuits.validate import validate
    from ..circuits.prune import prune_or_reuse
    from ..viewer import view

    out = output_folder(out)
    overrides = list(overrides or [])
    config_steps = load_config(config, overrides).train.steps
    dense_only, dense_set = ["sparsity.l0_fraction=1.0"], list(dense_set or [])
    load_config(config, overrides + dense_only + dense_set)  # a bad --dense-set fails now, not after training
    candidates = suite_tasks(suite) if tasks in ("auto", "all") else list(tasks)
    data_dir = out / "data"
    circuits_on = circuit_device(device)
    settings = PruneSettings(target_loss=target_loss)

    def make() -> Plan:  # a quick timing of this machine prices each stage
        print("timing this machine for the plan ...", file=sys.stderr, flush=True)
        vocab = TokenData(data_dir).vocab_size if (data_dir / MANIFEST).is_file() else DEFAULT_VOCAB
        rates = time_this_machine(load_config(config, overrides), load_config(config, overrides + dense_only + dense_set), vocab,
                                  device)
        n_tasks = min(GUESSED_TASKS, len(candidates), max_tasks or len(candidates))
        done, trained_steps = trained_before(out)
        wanted = Scope(steps=trained_steps or config_steps, tasks=n_tasks, evolve=True,
                       claim_targets=sorted(claim_targets, key=lambda t: abs(t - target_loss)), claim_seeds=claim_seeds,
                       claim_tasks=min(GUESSED_CLAIM_TASKS, n_tasks), claim_dense_models=3, control=control,
                       candidates=len(candidates), models=5)
        prepare_s = 0.0 if (data_dir / MANIFEST).is_file() else PREPARE_SECONDS
        return make_plan(minutes * 60, rates, settings.steps, wanted, prepare_s, tuple(done))

    plan = Plan.load_or_make(out, minutes * 60, make)
    print(f"plan for --minutes {minutes:g} on this machine:\n" + plan.table(), file=sys.stderr)
    if plan_only:
        return {"plan": {"budget_s": plan.budget_s, "initial": plan.initial, "shares": plan.shares,
                         "scope": dataclasses.asdict(plan.scope)},
                "cuts": list(plan.cuts.values())}
    steps = plan.scope.steps
    overrides.append(f"train.steps={steps}")
    dense_overrides = overrides + dense_only + [f"train.eval_interval={max(10, steps // 36)}"] + dense_set

    if not (data_dir / MANIFEST).is_file():
        plan.run("prepare corpus", lambda: prepare(data_dir, corpus=corpus, force=True))
    # the sparse model keeps KEPT_MODELS models along its training, for `evolve`
    kept = [f"train.keep_every={max(1, steps // KEPT_MODELS)}"]
    plan.run("train sparse model", lambda: _train_stage(config, overrides + kept, data_dir, out / "sparse", device))
    sparse_val = _val_losses(out / "sparse")[-1][1]
    if plan.scope.dense:
        plan.run("train dense model", lambda: _train_stage(config, dense_overrides, data_dir, out / "dense", device))
    n_matched = matched_steps(out / "dense", sparse_val) if plan.scope.dense else None
    val_losses = JsonCache(out / "val_losses.json")

    def val_loss(model: str) -> float:  # the whole validation split, once per model's weights
        run = Run.open(out / model)
        return val_losses.get(model, run.weights_sha256, lambda: evaluate_run(run, device=circuits_on)["val_loss"])

    def train_dense(name: str, n_steps: int) -> None:
        _train_stage(config, dense_overrides + [f"train.steps={n_steps}"], data_dir, out / name, device)

    bracket = None  # without dense models (claim (a) does not fit the budget, said in the plan) none is matched
    if plan.scope.dense and n_matched is None:  # the dense model never reached the sparse model's loss: nothing to match
        print(f"the dense model never reached the sparse model's validation loss {sparse_val:.4f}:"
              " no loss-matched dense model", file=sys.stderr)
    elif plan.scope.dense:
        plan.run("train loss-matched dense model", lambda: train_dense("dense_matched", n_matched))
        bracket = plan.run("bracket the sparse loss", lambda: bracket_sparse_loss(
            train_dense, n_matched, val_loss("sparse"), val_loss))
        print("dense models at the sparse loss " + f"{val_loss('sparse'):.4f}: " + ", ".join(
            f"{m} ({t['steps']} steps) {t['val_loss']:.4f}" for m, t in bracket["tried"].items())
            + ("" if bracket["bracketed"] else "; none on the other side: the nearest stands alone"), file=sys.stderr)
    models = ["sparse", *(bracket["tried"] if bracket else []), *(["dense"] if plan.scope.dense else [])]
    runs = {m: Run.open(out / m) for m in models}
    benches = {m: Workbench(runs[m], circuits_on) for m in models}  # each model loaded once, each task tokenized once
    scores = JsonCache(out / "task_scores.json")  # once per model's weights and task list: a resumed run reads them
    task_losses = plan.run("evaluate tasks", lambda: {
        m: scores.get(m, f"{runs[m].weights_sha256} {' '.join(candidates)}",
                      lambda: score_tasks(benches[m].model, candidates, "choose")) for m in models})
    atomic_write_text(out / "tasks.json", json.dumps(task_losses, indent=1))
    losses = {m: {t: row.get("loss") for t, row in task_losses[m].items()} for m in models}
    # a task the audit flags under any model's tokenisation or bigram table (choose records) is flagged
    flagged = {t: sorted({cue for m in models for cue in task_losses[m][t].get("audit_flagged", [])}) for t in candidates}
    sparse_tasks = sorted((t for t in candidates if losses["sparse"].get(t) is not None
                           and losses["sparse"][t] <= target_loss), key=lambda t: losses["sparse"][t])
    if max_tasks and len(sparse_tasks) > max_tasks:
        print(f"pruning the {max_tasks} tasks of {len(sparse_tasks)} the sparse model does best (--max-tasks)",
              file=sys.stderr)
        sparse_tasks = sparse_tasks[:max_tasks]
    print(f"the sparse model does {len(sparse_tasks)} of {len(candidates)} tasks to loss <= {target_loss:g}:"
          f" {', '.join(sparse_tasks) or 'none'}", file=sys.stderr)
    baselines = {"dense": {"dense": val_loss("dense")}} if plan.scope.dense else {}
    if bracket:
        baselines = {"dense_at_sparse_loss": bracket["models"], **baselines}
    dense_models = sorted({m for baseline in baselines.values() for m in baseline})

    width = lambda t: benches["sparse"].splits(t).train.padded_width()  # a mask step's cost goes with it
    # when the budget cuts the circuits, those of the shortest prompts are drawn: the most circuits it buys
    cheapest = sorted(sparse_tasks, key=width)

    def counted():  # the circuit stages planned again with the tasks counted (once: a resumed run keeps it)
        most, claimed = claimed_tasks(losses, flagged, baselines, plan.wanted.claim_targets, margin)
        wanted = plan.wanted
        wanted.tasks, wanted.task_tokens = len(sparse_tasks), [width(t) for t in cheapest]
        wanted.claim_tasks, wanted.claim_tokens = most, [width(t) for t in claimed]
        wanted.claim_dense_models = len(dense_models)
        fit_circuits(plan, plan.left() - plan.shares["report"])

    plan.decide("tasks counted", counted)
    if len(sparse_tasks) > plan.scope.tasks:
        drawn = set(cheapest[:plan.scope.tasks])
        sparse_tasks = [t for t in sparse_tasks if t in drawn]

    def circuit_dir(model: str, task: str, target: float = target_loss, seed: int = 0) -> Path:
        folder = (model if target == target_loss else f"{model}-target{target:g}") + (f"-seed{seed}" if seed else "")
        return out / "circuits" / folder / Path(task).stem

    def prune_all():
        circuit_settings = dataclasses.replace(settings, edges=plan.scope.edges)  # the circuits drawn: edges too
        for task in list(sparse_tasks):  # a circuit of other weights, records or settings is pruned again
            try:
                prune_or_reuse(benches["sparse"], task, circuit_dir("sparse", task), circuit_settings)
            except NoCircuitToFind as err:  # the empty circuit already does it: no circuit to draw
                print(f"no circuit for {Path(task).stem}: {err}", file=sys.stderr)
                sparse_tasks.remove(task)

    attribution = dataclasses.replace(settings, method="attribution")

    def attribution_all():  # the fast baseline a learned circuit should beat, beside each circuit
        for task in sparse_tasks:
            prune_or_reuse(benches["sparse"], task, circuit_dir("sparse-attribution", task), attribution, show_progress=False)

    def label_all():
        for task in sparse_tasks:
            if read_labels(circuit_dir("sparse", task), runs["sparse"].weights_sha256) is None:
                label_run(benches["sparse"], circuit_dir=circuit_dir("sparse", task))

    def view_all():
        for task in sparse_tasks:
            if not (circuit_dir("sparse", task) / "circuit.html").is_file():
                view(circuit_dir("sparse", task), run=benches["sparse"])

    def claim():
        scope = plan.scope
        return claim_a(benches, losses, flagged, tuple(scope.claim_targets), margin, circuit_dir, settings, baselines,
                       val_loss("sparse"), scope.claim_seeds, control, out / "claim.png", scope.claim_tasks)

    def claim_fitted():  # claim (a) planned again with the time left and the pruning rate measured so far
        plan.measured("prune circuits", plan.cost()["prune circuits"], ("mask_step_sparse", "mask_step_dense"))
        fit_claim(plan, plan.left() - plan.shares["report"])

    plan.run("prune circuits", prune_all)
    plan.run("attribution-patching baseline", attribution_all)
    hard_forms = JsonCache(out / "hard_forms.json")

    def validate_all():
        for task in sparse_tasks:
            directory = circuit_dir("sparse", task)
            if read_validation(directory) is None:
                validate(directory, benches["sparse"], control=control)
            # the circuit's loss on the task's hard forms, once per circuit (circuit.json's digest)
            hard_forms.get(Path(task).stem, file_sha256(directory / CIRCUIT_FILE),
                           lambda: hard_form_losses(directory, task, benches["sparse"]))

    plan.run("validate circuits", validate_all)
    plan.run("label circuit nodes", label_all)
    plan.run("view circuits", view_all)
    evolution = (plan.run("evolve the smallest circuit", lambda: evolve_smallest(out, runs["sparse"], sparse_tasks,
                                                                                 circuit_dir, settings, circuits_on))
                 if plan.scope.evolve else {"skipped": "left out to fit the time budget (--minutes)"})
    plan.decide("claim (a) fitted", claim_fitted)
    claim_cut = plan.cuts.get("claim") == CLAIM_NOT_DRAWN
    comparisons = {} if claim_cut else plan.run("claim (a)", claim)
    summary = collect_summary(out, evolution, sparse_tasks, candidates, task_losses, losses, flagged, comparisons,
                              circuit_dir, target_loss, margin, n_matched, {m: val_loss(m) for m in runs}, bracket,
                              {Path(t).stem: hard_forms.value(Path(t).stem) for t in sparse_tasks},
                              runs["sparse"].weights_sha256)
    summary["cuts"] = list(plan.cuts.values())
    if claim_cut:
        summary["claim_skipped"] = "left out to fit the time budget (--minutes)"
    plan.run("report", lambda: write_report(out, summary))
    summary["seconds_by_stage"] = plan.actual
    summary["plan"] = {"budget_s": plan.budget_s, "initial": plan.initial, "shares": plan.shares,
                       "scope": dataclasses.asdict(plan.scope)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print(format_summary(summary))
    print(f"planned against actual (--minutes {minutes:g}):\n" + plan.table(), file=sys.stderr)
    return summary


def claim_a(benches: dict[str, Workbench], losses: dict, flagged: dict, targets: tuple[float, ...], margin: float, circuit_dir,
            settings: PruneSettings, baselines: dict[str, dict[str, float]], sparse_loss: float, seeds: int, control: bool,
            plot_path: Path, max_tasks: int | None = None) -> dict[str, list[dict]]:
    """Per baseline ({name: {dense model: validation loss}}), per target: the tasks every model does with
    margin and the audit does not flag (choose records; at most `max_tasks`, those the sparse model
    does best), each (model, task) pruned with `seeds` seeds, the smallest circuit meeting the target
    on the choose records kept and validated as the main circuits are (reported beside it; the test
    records never decide which tasks count)."""
    from ..circuits.validate import validate
    from ..circuits.prune import prune_or_reuse

    def seed_circuits(model: str, task: str, target: float) -> list[dict]:
        found = []
        for seed in range(seeds):
            directory = circuit_dir(model, task, target, seed)
            m = prune_or_reuse(benches[model], task, directory, dataclasses.replace(settings, target_loss=target, seed=seed),
                               show_progress=False).metrics
            found.append({"seed": seed, "edges": m["n_edges"], "nodes": m["n_nodes"], "directory": directory,
                          "reached": m["reached"], "metrics": m})
        return found

    def judged(circuit: dict, model: str, target: float) -> dict:
        if read_validation(circuit["directory"]) is None:
            validate(circuit["directory"], benches[model], control=control)
        evidence, why = circuit_is_evidence(circuit["metrics"], target, read_validation(circuit["directory"]))
        return {**circuit, "evidence": evidence, "why": why}

    comparisons = {}
    for name, baseline in baselines.items():
        per_target = []
        for target in sorted(targets):
            models = ["sparse", *baseline]
            chosen, excluded = claim_tasks({m: losses[m] for m in models}, flagged, target, margin)
            if max_tasks is not None and len(chosen) > max_tasks:  # the time budget's cut
                chosen = sorted(chosen, key=lambda t: losses["sparse"][t])
                excluded.update({t: "left out to fit the time budget (--minutes)" for t in chosen[max_tasks:]})
                chosen = chosen[:max_tasks]
            circuits = {m: {} for m in models}
            for task in chosen:
                try:
                    found = {m: seed_circuits(m, task, target) for m in models}
                except NoCircuitToFind as err:  # an empty circuit meets the target: no size to compare
                    excluded[task] = str(err)
                    continue
                for m in models:
                    circuits[m][Path(task).stem] = found[m]
            for m in models:  # validate each task's kept circuit (the smallest that meets the target)
                for stem, found in circuits[m].items():
                    best = best_circuit(found)  # the one claim_rows keeps
                    if best is not None:
                        found[found.index(best)] = judged(best, m, target)
            rows = claim_rows(circuits, "sparse", baseline, sparse_loss, target)
            rows["excluded"] = {**{Path(t).stem: why for t, why in excluded.items()}, **rows["excluded"]}
            rows["baseline"] = baseline
            per_target.append(rows)
        comparisons[name] = per_target
    plot_claim(plot_path, {COMPARISONS[d]: rows for d, rows in comparisons.items()})
    return comparisons


def hard_form_losses(circuit_dir: Path, task: str, bench: Workbench) -> dict[str, dict]:
    """The circuit's and the full model's loss on each hard form of its task (test records)."""
    from ..errors import SparseCircuitsError
    from ..tasks.records import pair_logits, task_loss

    circuit = Circuit.load(circuit_dir)
    bench = bench.for_circuit(circuit)
    model, means = bench.model, bench.means(circuit.data["ablation"], circuit.means_data, False)
    out = {}
    for form in HARD_FORMS.get(Path(task).stem, []):
        try:
            records = bench.splits(form).test
        except SparseCircuitsError as err:
            out[form] = {"error": str(err)}
            continue
        with circuit.only(model, means):
            circuit_loss = float(task_loss(pair_logits(model, records)))
        out[form] = {"full_model": float(task_loss(pair_logits(model, records))), "circuit": circuit_loss}
    return out


def evolve_smallest(out: Path, run: Run, sparse_tasks: list[str], circuit_dir, settings, device: str = "cpu") -> dict:
    """The circuit with the fewest edges (evidence first), pruned again at each model the sparse run
    kept: how it formed. Validated without the pruning controls, which would triple the time."""
    from .evolve import evolve

    if not run.kept_steps():
        return {"skipped": "the sparse model kept no models during training (trained before train.keep_every)"}
    if not sparse_tasks:
        return {"skipped": "the sparse model does no task to the target"}
    validations = {t: read_validation(circuit_dir("sparse", t)) for t in sparse_tasks}
    task = min(sparse_tasks, key=lambda t: (not validations[t]["evidence"], validations[t]["n_edges"]))
    folder = out / "evolution" / Path(task).stem
    result = evolve(run, task, folder, settings, control=False, device=device)
    return {"task": Path(task).stem, "page": str((folder / "evolution.html").relative_to(out)),
            "plot": str((folder / "evolution.png").relative_to(out)),
            "checkpoints": [{k: r[k] for k in ("step", "val_loss", "task_loss", "reached", "n_nodes", "n_edges")}
                            for r in result["checkpoints"]],
            "transitions": [{k: t[k] for k in ("from_step", "to_step", "jaccard", "kept")} | {"entered": len(t["entered"]),
                             "left": len(t["left"])} for t in result["transitions"]]}


def _path_figures(directory: Path) -> dict | None:
    """Δ, the paths' count and the top 3's share of Δ, of the node and the edge circuit (paths.json,
    which `view` wrote); None for a circuit drawn before paths were."""
    path = directory / PATHS_FILE
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    return {which: None if found.get(which) is None else {k: found[which][k] for k in ("delta", "n_paths", "top3_share")}
            for which in ("node", "edge")}


def collect_summary(out: Path, evolution: dict, sparse_tasks: list[str], candidates: list[str], task_losses: dict,
                    losses: dict, flagged: dict, comparisons: dict, circuit_dir, target_loss: float, margin: float,
                    n_matched: int | None, val_losses: dict[str, float], bracket: dict | None, hard_forms: dict,
                    sparse_weights: str) -> dict:
    """summary.json's content, read from what the stages wrote (nothing is evaluated here)."""
    circuits = {}
    for task in sparse_tasks:
        directory = circuit_dir("sparse", task)
        circuit = Circuit.load(directory).data
        validation = read_validation(directory)
        labels = read_labels(directory, sparse_weights)["nodes"]  # label_all wrote them for these weights
        circuits[Path(task).stem] = {
            "task_loss": losses["sparse"][task],
            "nodes": circuit["metrics"]["n_nodes"], "edges": circuit["metrics"]["n_edges"],
            "edge_circuit": ({k: circuit["edge_circuit"]["metrics"][k] for k in ("n_nodes", "n_edges", "loss_circuit", "reached")}
                             if "edge_circuit" in circuit else None),
            "loss_circuit": validation["loss_circuit"], "loss_circuit_interval": validation.get("loss_circuit_interval"),
            "loss_circuit_ablated": validation["loss_circuit_ablated"],
            "controls": {name: {k: c[k] for k in ("passed", "why")} for name, c in validation["controls"].items()},
            "evidence": validation["evidence"], "failed": not_evidence_reasons(validation),
            "nodes_labelled": sum(bool(n["labels"]) for n in labels),
            "nodes_labelled_above_baseline": sum(bool(n["labels"]) and n["labels"][0].get("beats_baseline", True)
                                                 for n in labels),
            "hard_forms": hard_forms[Path(task).stem],
            "attribution": _attribution_figures(circuit_dir("sparse-attribution", task)),
            "audit_flagged": flagged.get(task, []),
            "page": str((directory / "circuit.html").relative_to(out)),
            "paths": _path_figures(directory),
        }
    models = {m: {"val_loss": val_losses[m], "run_dir": m,
                  "does_at_target": [t for t in candidates if losses[m].get(t) is not None and losses[m][t] <= target_loss],
                  "does_with_margin": [t for t in candidates if does_with_margin(losses[m].get(t), target_loss, margin)]}
              for m in losses}
    done = models["sparse"]["does_at_target"]
    return {
        "target_loss": target_loss, "margin": margin, "models": models, "dense_matched_steps": n_matched,
        "dense_at_sparse_loss": bracket,
        "circuits": circuits, "claim": comparisons, "evolution": evolution, "task_losses": task_losses,
        "no_circuits": None if circuits else (
            f"the sparse model does {len(done)} of the {len(candidates)} tasks to loss <= {target_loss:g}, but the"
            " time budget left none for their circuits: give more --minutes" if done else
            f"the sparse model does none of the {len(candidates)} tasks to loss <= {target_loss:g}: train it longer"
            " (--minutes), widen it (--set model.d_model=...) or raise --target-loss"),
    }


def _attribution_figures(directory: Path) -> dict:
    m = Circuit.load(directory).metrics
    return {"nodes": m["n_nodes"], "edges": m["n_edges"], "loss_circuit": m["loss_circuit"],
            "loss_random_same_size": m["loss_random_same_size"], "seconds": m["seconds"]}
