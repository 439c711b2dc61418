"""`demo --minutes N`: N bounds the whole run, training included, on the machine it runs on.

At the start a quick timing of this machine (a few training steps of the sparse and the dense
model, a few mask-training steps) prices every stage, and the plan shares N among the stages:
training keeps the config's steps while they fit TRAIN_SHARE of N (else it trains fewer), and the
circuit stages get what is left, in order of priority: the sparse model's circuits (fewer tasks
when they do not fit), the evolution of one circuit, then claim (a) (fewer tasks down to two,
then fewer targets, then one task, then fewer pruning seeds). Each cut is printed in one line and listed in the summary. A
stage whose scope can shrink is planned again when it starts, with the time actually left and the
rate measured so far, so an estimate that was off moves a cut, not the deadline. The plan is kept
in DIR/plan.json, and a resumed run keeps it (with the time its earlier sessions spent); resumed
with another budget, it is planned again with the stages already done (a prepared corpus, trained
models) priced at nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..config import Config
from ..io import atomic_write_text

PLAN_FILE = "plan.json"
DEMO_MINUTES = 120.0  # every stage of the default config on 2 CPU cores, claim (a) cut to what fits (docs/performance.md)
TRAIN_SHARE = 0.5  # at most, for training, of the budget less preparing, scoring the tasks and the report
MIN_STEPS = 50
CLAIM_SHARE = 0.3  # of the time after training, at least, left to evolution and claim (a) when the circuits are cut
# measured on a 2-core CPU (docs/performance.md): a run's step against the bare step the probe times
# (cheaper while the weights anneal from dense; evaluations, checkpoints and batches from disk add)
TRAIN_OVERHEAD = 0.9
MATCHED_FRACTION = 0.65  # dense_matched's steps, of the dense run's (0.58 and 0.66 over three training seeds)
BRACKET_FRACTION = 1.4  # the bracketing schedules' steps together, of the dense run's (1.2 and 1.4)
PROBE_TOKENS = 40  # the probe's prompts; a mask step costs about in proportion to the positions its batches pad to
# a prune over its mask steps at the probe's rate for its task's padded width (measured with the batches
# grouped by width, `demo --minutes 15` at L0 1/16: 2 prunes 0.7 min against 1.1 planned at 1.7)
PRUNE_OVERHEAD = 1.2
VALIDATE_FRACTION = {True: 2.6, False: 0.4}  # a validation, of a prune: with and without the pruning controls
EVAL_MASK_STEPS = 1  # scoring one task with one model, in mask steps (20 tasks on 5 models took 33 s)
ATTRIBUTION_FRACTION = 0.1  # an attribution-patching circuit, of a prune
EDGE_FRACTION = 1.0  # edge pruning after the nodes, of a prune (a mask of as many steps, measured alike)
LABEL_SECONDS, VIEW_SECONDS = 3.0, 1.0  # per circuit (the default demo labelled six in 19.5 s)
GUESSED_TASKS = 6  # tasks the sparse model does, before they are counted (the default config's)
GUESSED_CLAIM_TASKS = 4
GUESSED_TOKENS = 20  # their padded widths, before they are counted (the default config's seven: 6 to 31)
GUESSED_CLAIM_TOKENS = 8  # claim (a)'s, the tasks every model does: short prompts (6 to 9 in the default demo)
REPORT_SECONDS = 10.0
PREPARE_SECONDS = 30.0  # the default corpus's preparation


@dataclass
class Rates:
    """Seconds per unit of work on this machine."""
    sparse_step: float
    dense_step: float
    mask_step_sparse: float
    mask_step_dense: float


def time_steps(config: Config, steps: int = 2, train_device: str = "cpu", circuit_device: str = "cpu") -> tuple[float, float]:
    """(seconds per training step on `train_device`, seconds per mask step on `circuit_device`) of
    `config`'s model at its final weight sparsity, each the mean of `steps` after one warm-up step."""
    import torch

    from ..circuits.find import PruneSettings, train_mask
    from ..model.gpt import SparseGPT
    from ..model.sparse_kernels import sparse_weight_kernels
    from ..model.sparsity import apply_weight_topk, sparse_parameters
    from ..rundir import resolve_device
    from ..tasks.records import TokenizedTask
    from ..train.trainer import make_optimizer, training_step

    generator = torch.Generator().manual_seed(0)
    model = SparseGPT(config.model)
    sparse = sparse_parameters(model, config.sparsity)
    s = config.sparsity
    apply_weight_topk(sparse, s.l0_fraction, s.min_nonzero_per_neuron, s.min_nonzero_on)
    shape = (config.train.batch_size, config.model.ctx_len)
    x, y = (torch.randint(0, config.model.vocab_size, shape, generator=generator) for _ in range(2))
    train_device, circuit_device = resolve_device(train_device), resolve_device(circuit_device)
    model.to(train_device)
    optimizer = make_optimizer(model, config.optim)  # over the parameters where they now live

    def train_once():
        training_step(model, optimizer, sparse, x.to(train_device), y.to(train_device), config.optim.lr, s.l0_fraction, config)
        optimizer.zero_grad(set_to_none=True)
        _synchronize(train_device)

    train_s = _seconds(train_once, steps)
    model.to(circuit_device)
    prompt_tokens = min(PROBE_TOKENS, config.model.ctx_len - 1)
    settings = PruneSettings()
    n = 2 * settings.batch_pairs
    task = TokenizedTask("probe", "train", torch.randint(0, config.model.vocab_size, (n, prompt_tokens),
                                                         generator=generator).tolist(),
                         torch.randint(0, config.model.vocab_size, (n,), generator=generator),
                         torch.randint(0, config.model.vocab_size, (n,), generator=generator), 0, 0)
    means = {site: torch.zeros(width) for site, width in model.node_sites.items()}

    def mask_seconds(n: int) -> float:
        start = time.perf_counter()
        train_mask(model, task, means, PruneSettings(steps=n), show_progress=False)
        _synchronize(circuit_device)
        return time.perf_counter() - start

    with sparse_weight_kernels(model, settings.csr_max_density):
        mask_seconds(1)  # warm-up
        # a mask's setup (its optimizer, the hooks) is paid once per mask: the difference leaves one step
        mask_s = max(mask_seconds(steps + 1) - mask_seconds(1), 0.0) / steps
    return train_s, mask_s


def _synchronize(device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them finished
        import torch

        torch.cuda.synchronize(device)


def _seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, kernel choice
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def time_this_machine(sparse_config: Config, dense_config: Config, vocab_size: int, device: str | None = None) -> Rates:
    """`vocab_size`: the tokenizer's (a config leaves it to the data). `device`: where everything runs
    (default: training on each config's train.device, circuits on the CPU, as the demo runs them)."""
    from ..rundir import circuit_device

    for config in (sparse_config, dense_config):
        config.model.vocab_size = config.model.vocab_size or vocab_size
    sparse_step, mask_sparse = time_steps(sparse_config, 2, device or sparse_config.train.device, circuit_device(device))
    dense_step, mask_dense = time_steps(dense_config, 2, device or dense_config.train.device, circuit_device(device))
    return Rates(sparse_step, dense_step, mask_sparse, mask_dense)


@dataclass
class Scope:
    """What the run does: training steps, the circuits' tasks, evolution, claim (a)'s targets, seeds and tasks."""
    steps: int
    tasks: int
    evolve: bool
    claim_targets: list[float]
    claim_seeds: int
    claim_tasks: int
    claim_dense_models: int  # dense models claim (a) prunes (the bracketing pair and the stronger one)
    control: bool
    candidates: int
    models: int  # models whose tasks are scored
    dense: bool = True  # the dense baselines are trained (only claim (a) needs them)
    edges: bool = True  # each circuit's edges pruned after its nodes (`prune --edges`)
    task_tokens: list[float] = field(default_factory=list)  # each task's padded width (TokenizedTask.padded_width), once counted
    claim_tokens: list[float] = field(default_factory=list)  # the same for claim (a)'s tasks


def prune_seconds(rates: Rates, mask_steps: int, dense: bool = False, tokens: float = PROBE_TOKENS) -> float:
    """One prune of a task whose padded width (`TokenizedTask.padded_width`) is `tokens`."""
    return mask_steps * (rates.mask_step_dense if dense else rates.mask_step_sparse) * PRUNE_OVERHEAD * tokens / PROBE_TOKENS


def estimates(scope: Scope, rates: Rates, mask_steps: int, prepare_s: float) -> dict[str, float]:
    """Seconds per stage for this scope at these rates."""
    train = scope.steps * TRAIN_OVERHEAD
    dense_train = train * rates.dense_step if scope.dense else 0.0
    widths = (scope.task_tokens or [GUESSED_TOKENS] * scope.tasks)[:scope.tasks]
    prunes = sum(prune_seconds(rates, mask_steps, tokens=w) for w in widths)  # the circuits' tasks, in order
    prune_s = prunes / len(widths) if widths else prune_seconds(rates, mask_steps)  # one, of a mean width
    validate_s = VALIDATE_FRACTION[scope.control]
    # claim (a): per target and task, every model pruned with each seed, the kept circuits validated
    claim_widths = (scope.claim_tokens or [GUESSED_CLAIM_TOKENS] * scope.claim_tasks)[:scope.claim_tasks]
    per_target = sum((scope.claim_seeds + validate_s) * (prune_seconds(rates, mask_steps, tokens=w) + scope.claim_dense_models
                                                         * prune_seconds(rates, mask_steps, dense=True, tokens=w))
                     for w in claim_widths)
    return {
        "prepare corpus": prepare_s,
        "train sparse model": train * rates.sparse_step,
        "train dense model": dense_train,
        "train loss-matched dense model": MATCHED_FRACTION * dense_train,
        "bracket the sparse loss": BRACKET_FRACTION * dense_train,
        "evaluate tasks": (scope.models if scope.dense else 1) * scope.candidates * EVAL_MASK_STEPS * rates.mask_step_sparse,
        "prune circuits": prunes * (1 + EDGE_FRACTION * scope.edges),
        "attribution-patching baseline": ATTRIBUTION_FRACTION * prunes,
        "validate circuits": validate_s * prunes,
        "label circuit nodes": scope.tasks * LABEL_SECONDS,
        "view circuits": scope.tasks * VIEW_SECONDS,
        # a prune and a validation without the pruning controls at each of the 4 models the sparse run keeps
        "evolve the smallest circuit": 4 * (1 + VALIDATE_FRACTION[False]) * prune_s if scope.evolve and scope.tasks else 0.0,
        "claim (a)": len(scope.claim_targets) * per_target * scope.dense,
        "report": REPORT_SECONDS,
    }


STAGES = ("prepare corpus", "train sparse model", "train dense model", "train loss-matched dense model",
          "bracket the sparse loss", "evaluate tasks", "prune circuits", "attribution-patching baseline", "validate circuits",
          "label circuit nodes", "view circuits", "evolve the smallest circuit", "claim (a)", "report")
TRAINING = ("train sparse model", "train dense model", "train loss-matched dense model", "bracket the sparse loss")
CIRCUITS = ("prune circuits", "attribution-patching baseline", "validate circuits", "label circuit nodes", "view circuits")


@dataclass
class Plan:
    """The budget's shares per stage (they sum to the budget), the scope asked for (`wanted`) and the
    scope they buy, the cuts made (one line per area: training, circuits, evolution, claim (a)), and
    the seconds each stage took."""
    budget_s: float
    rates: Rates
    mask_steps: int
    wanted: Scope
    scope: Scope
    shares: dict[str, float] = field(default_factory=dict)
    cuts: dict[str, str] = field(default_factory=dict)
    actual: dict[str, float] = field(default_factory=dict)
    decided: list[str] = field(default_factory=list)  # the re-plans made, which a resumed run does not make again
    initial: dict[str, float] = field(default_factory=dict)  # the shares as first planned
    done: list[str] = field(default_factory=list)  # stages finished before the plan was made: they cost nothing
    path: Path | None = None
    started: float = field(default_factory=time.perf_counter)
    spent_before: float = 0.0  # seconds earlier sessions of a resumed run spent
    quiet: bool = False  # a plan only tried: its cuts are not said

    # -- building and keeping the plan

    @classmethod
    def load_or_make(cls, out: Path, budget_s: float, make) -> "Plan":
        """The plan in DIR/plan.json when its budget is this one (a resumed run keeps its plan); else `make()`."""
        path = out / PLAN_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if math.isclose(data["budget_s"], budget_s):
                    plan = cls(budget_s, Rates(**data["rates"]), data["mask_steps"], Scope(**data["wanted"]),
                               Scope(**data["scope"]), data["shares"], data["cuts"], data["actual"], data["decided"],
                               data["initial"], data.get("done", []), path)
                    plan.spent_before = sum(plan.actual.values())
                    print(f"resuming with the plan in {path} ({plan.spent_before / 60:.1f} min spent before)", file=sys.stderr)
                    return plan
            except (OSError, KeyError, TypeError, json.JSONDecodeError):
                pass  # an unreadable or older plan is made again
        started = time.perf_counter()
        plan = make()
        plan.started, plan.path = started, path  # the timing of the machine counts against the budget
        plan.save()
        return plan

    def save(self) -> None:
        if self.path is not None:
            data = {"budget_s": self.budget_s, "rates": asdict(self.rates), "mask_steps": self.mask_steps,
                    "wanted": asdict(self.wanted), "scope": asdict(self.scope), "shares": self.shares, "cuts": self.cuts,
                    "actual": self.actual, "decided": self.decided, "initial": self.initial, "done": self.done}
            atomic_write_text(self.path, json.dumps(data, indent=1))

    def elapsed(self) -> float:
        return self.spent_before + time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def cost(self) -> dict[str, float]:
        cost = estimates(self.scope, self.rates, self.mask_steps, self.shares.get("prepare corpus", 0.0))
        return {name: 0.0 if name in self.done else seconds for name, seconds in cost.items()}

    def cut(self, area: str, line: str | None) -> None:
        """Set (or, with None, clear) the cut of one area, and say it."""
        if line is None:
            self.cuts.pop(area, None)
            return
        if self.cuts.get(area) != line and not self.quiet:
            print(f"cut to fit --minutes {self.budget_s / 60:g}: {line}", file=sys.stderr)
        self.cuts[area] = line

    def share(self, names) -> None:
        """Shares for `names` from the estimates; claim (a) takes what is left of the budget after the
        other stages' shares (their actual time, for the stages done)."""
        cost = self.cost()
        self.shares.update({n: round(cost[n], 1) for n in names})
        others = sum(self.actual.get(n, v) for n, v in self.shares.items() if n != "claim (a)")
        self.shares["claim (a)"] = round(max(self.budget_s - others, cost["claim (a)"] if "claim (a)" in names else 0.0), 1)

    def decide(self, name: str, replan) -> None:
        """Run `replan` (which changes the scope and shares) once in the life of the run."""
        if name not in self.decided:
            replan()
            self.decided.append(name)
            self.save()

    def measured(self, stage: str, planned: float, rates: tuple[str, ...]) -> None:
        """Scale `rates` by what `stage` took against the `planned` seconds, so the stages after it are
        priced at the rate this run shows (not when the stage ran in an earlier run without a plan)."""
        took = self.actual.get(stage)
        factor = took / planned if took and planned > 0 else 1.0
        if 0.25 <= factor <= 4:
            for name in rates:
                setattr(self.rates, name, getattr(self.rates, name) * factor)

    # -- running the stages

    def run(self, name: str, fn):
        names = list(self.shares)
        print(f"[{names.index(name) + 1}/{len(names)}] {name}  (planned {self.shares[name] / 60:.1f} min; elapsed"
              f" {self.elapsed() / 60:.1f} min, {max(0.0, self.left()) / 60:.1f} min of the budget left)",
              file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = fn()
        self.actual[name] = round(self.actual.get(name, 0.0) + time.perf_counter() - started, 1)
        self.save()
        return result

    def table(self) -> str:
        lines = [f"{'stage':34s} {'planned':>8s} {'actual':>8s}  (minutes)"]
        for name, share in self.shares.items():
            actual = self.actual.get(name)
            lines.append(f"{name:34s} {share / 60:8.1f} {'-' if actual is None else f'{actual / 60:.1f}':>8s}")
        total = sum(self.actual.values())
        lines.append(f"{'total':34s} {self.budget_s / 60:8.1f} {total / 60:8.1f}")
        return "\n".join(lines)


def make_plan(budget_s: float, rates: Rates, mask_steps: int, wanted: Scope, prepare_s: float,
              done: tuple[str, ...] = ()) -> Plan:
    """Shares of `budget_s`: training at the wanted steps while it fits TRAIN_SHARE of the budget
    (else fewer steps), the circuit stages at a guessed scope cut to fit, the rest to claim (a).
    The dense baselines, which only claim (a) needs, train only when all of them fit at the wanted
    steps and claim (a) still fits with one seed, target and task: else the sparse model alone
    trains, at the wanted steps where they fit (the models are never trained shorter for them).
    `done`: stages a resumed run finished before (its trained models), priced at nothing."""
    if wanted.dense:
        plan = _make_plan(budget_s, rates, mask_steps, wanted, prepare_s, done, quiet=True)
        if "training" in plan.cuts or plan.cuts.get("claim") == CLAIM_NOT_DRAWN:
            wanted = replace(wanted, dense=False)
            print(f"cut to fit --minutes {budget_s / 60:g}: {NO_DENSE}", file=sys.stderr)
    plan = _make_plan(budget_s, rates, mask_steps, wanted, prepare_s, done)
    if not wanted.dense:
        plan.cuts = {"dense": NO_DENSE, **plan.cuts}
    plan.initial = dict(plan.shares)
    return plan


def _make_plan(budget_s: float, rates: Rates, mask_steps: int, wanted: Scope, prepare_s: float, done: tuple[str, ...],
               quiet: bool = False) -> Plan:
    plan = Plan(budget_s, rates, mask_steps, wanted, replace(wanted), dict.fromkeys(STAGES, 0.0), done=list(done),
                quiet=quiet)
    plan.shares["prepare corpus"] = prepare_s
    cost = plan.cost()
    training = sum(cost[n] for n in TRAINING)
    room = budget_s - sum(cost[n] for n in ("prepare corpus", "evaluate tasks", "report"))
    if training > TRAIN_SHARE * room:
        plan.scope.steps = max(MIN_STEPS, int(wanted.steps * TRAIN_SHARE * room / training))
        plan.cut("training", f"training {plan.scope.steps} steps instead of the config's {wanted.steps}, so that the"
                             f" models' training fits {TRAIN_SHARE:.0%} of the budget")
    fixed = ("prepare corpus", *TRAINING, "evaluate tasks", "report")
    plan.share(fixed)
    if sum(plan.shares[n] for n in fixed) > budget_s and not quiet:
        print(f"warning: --minutes {budget_s / 60:g} is less than training {MIN_STEPS} steps and scoring the tasks take on"
              " this machine: the run will overrun it", file=sys.stderr)
    fit_circuits(plan, budget_s - sum(plan.shares[n] for n in fixed))
    return plan


def fit_circuits(plan: Plan, seconds: float) -> None:
    """The circuit stages' scope, from the wanted one, cut to `seconds` by priority (the circuits,
    then the evolution, then claim (a)), and their shares."""
    wanted, scope = plan.wanted, plan.scope
    for key, value in asdict(wanted).items():  # all but the training steps, decided before any model trained
        if key != "steps":
            setattr(scope, key, value)
    # with claim (a) to draw, the circuits leave it CLAIM_SHARE of the time; without it they may take it all
    room = seconds * (1 - CLAIM_SHARE if wanted.dense and wanted.claim_tasks else 1.0)

    def circuits_cost(n: int) -> float:  # the first n tasks' circuits, pruned, validated, labelled and drawn
        return sum(estimates(replace(scope, tasks=n), plan.rates, plan.mask_steps, 0.0)[name] for name in CIRCUITS)

    def most_circuits() -> int:
        return max((n for n in range(wanted.tasks + 1) if circuits_cost(n) <= room), default=0)

    scope.tasks = most_circuits()
    if scope.edges:  # edge circuits are drawn when they cost no circuit
        scope.edges = False
        if most_circuits() > scope.tasks:
            scope.tasks = most_circuits()
            plan.cut("edges", "no edge pruning after the nodes: it would cost circuits")
        else:
            scope.edges = True
            plan.cut("edges", None)
    plan.cut("circuits", None if scope.tasks == wanted.tasks else
             f"circuits for {scope.tasks} of the {wanted.tasks} tasks the sparse model does, those of the shortest prompts")
    cost = plan.cost()
    left = seconds - sum(cost[n] for n in CIRCUITS)
    scope.evolve = wanted.evolve and scope.tasks > 0 and cost["evolve the smallest circuit"] <= 0.5 * max(left, 0.0)
    plan.cut("evolve", None if scope.evolve or not wanted.evolve else "no evolution of the smallest circuit over training")
    fit_claim(plan, left - plan.cost()["evolve the smallest circuit"])
    plan.share((*CIRCUITS, "evolve the smallest circuit", "claim (a)"))


def fit_claim(plan: Plan, seconds: float) -> None:
    """Claim (a)'s scope, from the wanted one, cut to `seconds`: fewer tasks down to 2 (the fewest
    an interval over tasks needs), then fewer targets (the farthest from the circuits' own first), then
    one task, then fewer pruning seeds (last: each circuit is the best of its seeds, and one seed's
    mask may not have converged); not drawn when one circuit per model does not fit."""
    wanted, scope = plan.wanted, plan.scope
    scope.claim_seeds, scope.claim_targets, scope.claim_tasks = wanted.claim_seeds, list(wanted.claim_targets), wanted.claim_tasks
    if not wanted.dense:  # no dense baseline to compare with
        scope.claim_tasks = 0
        plan.cut("claim", CLAIM_NOT_DRAWN)
        plan.share(("claim (a)",))
        return

    def over() -> bool:
        return plan.cost()["claim (a)"] > seconds

    while over() and scope.claim_tasks > min(2, wanted.claim_tasks):
        scope.claim_tasks -= 1
    while over() and len(scope.claim_targets) > 1:
        scope.claim_targets.pop()
    while over() and scope.claim_tasks > 1:
        scope.claim_tasks -= 1
    while over() and scope.claim_seeds > 1:
        scope.claim_seeds -= 1
    while over() and scope.claim_tasks > 0:
        scope.claim_tasks -= 1
    if scope.claim_tasks == 0 and wanted.claim_tasks > 0:
        line = CLAIM_NOT_DRAWN
    elif (scope.claim_seeds, scope.claim_targets, scope.claim_tasks) != (wanted.claim_seeds, wanted.claim_targets,
                                                                          wanted.claim_tasks):
        line = (f"claim (a) with {scope.claim_seeds} pruning seeds (of {wanted.claim_seeds}), targets"
                f" {', '.join(f'{t:g}' for t in scope.claim_targets)} (of {', '.join(f'{t:g}' for t in wanted.claim_targets)}),"
                f" at most {scope.claim_tasks} tasks (of {wanted.claim_tasks})")
    else:
        line = None
    plan.cut("claim", line)
    plan.share(("claim (a)",))


CLAIM_NOT_DRAWN = "claim (a) not drawn"
NO_DENSE = ("no dense models: they and claim (a), which alone needs them, do not fit at the config's steps, so the sparse"
            " model has the training time")
