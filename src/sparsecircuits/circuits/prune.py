"""Pruning a model to the smallest set of nodes that still does a task (docs/method.md section 3),
and `prune`, which does it end to end for a run and a task and writes the circuit directory.

1. Learn a mask τ over every node: task loss + k * (active nodes), Heaviside forward with a
   sigmoid surrogate gradient, AdamW, τ clamped to [-1, 1]. By default k answers to the target
   (`penalty="adaptive"`): it falls while the mask's task loss misses the goal and rises while the
   loss clears it, so the mask's own active set ends at the goal and its ranking is meaningful
   where the count is chosen. `penalty="fixed"` keeps k at `k_coef` throughout (the paper's form).
2. Rank nodes by τ and find the smallest number kept (the empty circuit included) whose loss on the
   "choose" records meets the goal, `(1 - choose_margin) * target`: a scan of the ranking, then
   bisection inside the bracket. The margin keeps sufficiency on the test records from being a
   coin flip when the count only just meets the goal on the choose records.
3. Fit one logit scale (LBFGS, on the training records) for the circuit found.

The test records are never used for any choice: they are for the figures reported.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import SparseCircuitsError
from ..io import atomic_save_tensors, check_output_dir, directory_lock, staged_directory
from ..model.gpt import SparseGPT
from ..model.sparse_kernels import CSR_MAX_DENSITY, sparse_weight_kernels
from ..rundir import Run, as_run
from ..tasks.records import (TaskSplits, TokenizedTask, candidate_logits, pair_logits, task_accuracy, task_loss,
                             task_loss_interval)
from .circuit import CIRCUIT_ENTRIES, CIRCUIT_FILE, Circuit, records_sha256, ablation_values, load_task_splits, nodes_of
from .graph import circuit_edges
from .masks import NodeMask, ablation_hooks, keep_top_n


TARGET_LOSS = 0.15  # the default task loss a circuit must reach (the paper's main figures)


@dataclass
class PruneSettings:
    target_loss: float = TARGET_LOSS
    ablation: str = "mean"  # "mean" or "zero"
    penalty: str = "adaptive"  # "adaptive": k answers to the target; "fixed": k stays at k_coef
    steps: int = 300
    batch_pairs: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-3
    beta2: float = 0.95
    warmup_fraction: float = 0.05
    # the fixed penalty per active node, or where the adaptive one starts (the paper's search centre):
    # started higher, the mask drops nodes the task needs before the loss can answer, and a node
    # whose inputs are all ablated gets no gradient to come back
    k_coef: float = 1e-4
    choose_margin: float = 0.1  # the count meets (1 - choose_margin) * target on the choose records
    penalty_rate: float = 0.1  # the adaptive k rises by up to exp(penalty_rate) per step, falls 4x as fast
    init_mean: float = 0.1  # τ starts at N(init_mean, init_std)
    init_std: float = 0.01
    temperature: float = 1.0
    calibration_steps: int = 16
    seed: int = 0
    csr_max_density: float = CSR_MAX_DENSITY  # frozen layers at most this dense multiply through CSR kernels
    # "mask": rank nodes by a learned mask; "attribution": by attribution patching, the first-order
    # estimate of each node's effect when mean-ablated (one forward and backward per batch, no training)
    method: str = "mask"

    def validate(self) -> None:
        if self.method not in ("mask", "attribution"):
            raise SparseCircuitsError(f"--method must be 'mask' or 'attribution', not '{self.method}'")
        if self.penalty not in ("adaptive", "fixed"):
            raise SparseCircuitsError(f"penalty must be 'adaptive' or 'fixed', not '{self.penalty}'")
        if not 0 <= self.choose_margin < 1:
            raise SparseCircuitsError(f"--choose-margin {self.choose_margin} must be in [0, 1)")
        if self.ablation not in ("mean", "zero"):
            raise SparseCircuitsError(f"--ablation must be 'mean' or 'zero', not '{self.ablation}'")
        if not 0 < self.target_loss < math.log(2):
            raise SparseCircuitsError(f"--target-loss {self.target_loss} must be between 0 and ln 2 (chance)")
        if self.steps <= 0 or self.batch_pairs <= 0 or self.lr <= 0 or self.k_coef < 0 or self.temperature <= 0:
            raise SparseCircuitsError("pruning steps, batch, lr and temperature must be positive, k_coef >= 0")

    @property
    def goal(self) -> float:
        """The loss the mask trains to and the node count is chosen at, a margin under the target."""
        return (1 - self.choose_margin) * self.target_loss


class AdaptivePenalty:
    """The node penalty k as a controller on the mask's task loss: a step of log k against the
    relative gap between the loss (averaged over recent batches) and the goal. Missing the goal
    lowers k, so nodes the task needs come back; clearing it with room raises k, so more are pruned.
    Since Adam scales each τ's step by its own gradient history, only the ratio of the penalty's
    gradient to the task's matters, and k settles where the active set just meets the goal."""

    K_RANGE = (1e-7, 10.0)
    MISS_GAIN = 4.0
    SETTLE_FRACTION = 0.2  # the last fifth of the steps

    def __init__(self, settings: PruneSettings):
        self.k, self.goal, self.rate = settings.k_coef, settings.goal, settings.penalty_rate
        self.adaptive = settings.penalty == "adaptive"
        self.average: float | None = None

    def update(self, loss: float, settling: bool = False) -> float:
        """`settling`: the last part of training, where k may only fall, so the mask ends meeting the goal."""
        self.average = loss if self.average is None else 0.8 * self.average + 0.2 * loss
        if self.adaptive:
            gap = max(-1.0, min(1.0, (self.average - self.goal) / self.goal))
            # a miss is answered faster than room is taken: a node dropped too far may not come back
            step = -self.rate * gap * (self.MISS_GAIN if gap > 0 else 1.0)
            if not (settling and step > 0):
                self.k = min(max(self.k * math.exp(step), self.K_RANGE[0]), self.K_RANGE[1])
        return self.k


def fit_logit_scale(logits: torch.Tensor, steps: int = 16) -> float:
    """The single positive logit scale that minimises the two-way task loss (LBFGS on its log)."""
    log_scale = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_scale], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = task_loss(logits * log_scale.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    scale = float(log_scale.detach().exp())
    return scale if math.isfinite(scale) else 1.0


class CircuitEvaluator:
    """Task loss of any set of kept nodes, every other node ablated, on one task's records."""

    def __init__(self, model: SparseGPT, splits: TaskSplits, means: Mapping[str, torch.Tensor],
                 calibration_steps: int = 16):
        self.model, self.splits, self.means = model, splits, means
        self.calibration_steps = calibration_steps

    def hooks(self, keep: Mapping[str, torch.Tensor]):
        return ablation_hooks(self.model, keep, self.means)

    def logits(self, keep: Mapping[str, torch.Tensor] | None, split: str = "test") -> torch.Tensor:
        return pair_logits(self.model, self.splits[split], self.hooks(keep) if keep is not None else None)

    def loss(self, keep: Mapping[str, torch.Tensor] | None, split: str = "test") -> float:
        return float(task_loss(self.logits(keep, split)))

    def calibrated(self, keep: Mapping[str, torch.Tensor]) -> tuple[float, float, float]:
        """(test loss after a logit scale fitted on the training records, accuracy, the scale)."""
        scale = fit_logit_scale(self.logits(keep, "train"), self.calibration_steps)
        test_logits = self.logits(keep, "test") * scale
        return float(task_loss(test_logits)), task_accuracy(test_logits), scale


def train_mask(model: SparseGPT, task: TokenizedTask, means: Mapping[str, torch.Tensor], settings: PruneSettings,
               show_progress: bool = True) -> NodeMask:
    """Learn τ for every node of every node site (`mask.k_final` is the penalty it ended with)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    mask = NodeMask(model.node_sites, settings.init_mean, settings.init_std, settings.temperature, generator).to(device)
    optimizer = torch.optim.AdamW(mask.parameters(), lr=settings.lr, betas=(0.9, settings.beta2),
                                  weight_decay=settings.weight_decay)
    warmup = max(1, round(settings.warmup_fraction * settings.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))))
    model.requires_grad_(False)
    gates: dict[str, torch.Tensor] = {}

    def masked(x: torch.Tensor, site: str) -> torch.Tensor:
        gate = gates[site]
        return x * gate + means[site] * (1 - gate)

    penalty = AdaptivePenalty(settings)
    batch_size = min(len(task), 2 * settings.batch_pairs)
    bar = tqdm(range(settings.steps), desc=f"mask {task.name}", unit="step", disable=not show_progress, file=sys.stderr)
    with model.hooks({site: masked for site in model.node_sites}):
        for step in bar:
            indices = torch.randperm(len(task), generator=generator)[:batch_size]
            tokens, last, correct, incorrect = task.batch(indices)
            gates.update(mask.gates())
            logits = candidate_logits(model(tokens.to(device), at=last), correct, incorrect)
            loss = task_loss(logits)
            active = mask.active_count(gates)
            (loss + penalty.k * active).backward()
            params = list(mask.parameters())
            rms = torch.sqrt(sum(p.grad.pow(2).sum() for p in params) / sum(p.numel() for p in params))
            if rms > 1.0:  # RMS gradient clip
                for p in params:
                    p.grad.div_(rms)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            mask.clamp_()
            penalty.update(loss.item(), settling=step >= (1 - penalty.SETTLE_FRACTION) * settings.steps)
            if step % 10 == 0 or step == settings.steps - 1:
                bar.set_postfix(task_loss=f"{loss.item():.3f}", active=int(active.item()), k=f"{penalty.k:.1e}")
    mask.k_final = penalty.k
    return mask


def attribution_scores(model: SparseGPT, task: TokenizedTask, means: Mapping[str, torch.Tensor],
                       batch_pairs: int = 64) -> dict[str, torch.Tensor]:
    """Every node's attribution-patching score on the task's records: |gradient x (mean - activation)|
    summed over positions, its absolute value summed over records: the first-order estimate of how
    much mean-ablating that node alone moves each record's task loss."""
    device = next(model.parameters()).device
    scores = {site: torch.zeros(width, dtype=torch.float64) for site, width in model.node_sites.items()}
    model.requires_grad_(False)
    for start in range(0, len(task), 2 * batch_pairs):
        tokens, last, correct, incorrect = task.batch(range(start, min(start + 2 * batch_pairs, len(task))))
        # summed, not averaged: a row's gradient is then its own record's (rows do not interact)
        loss_of = lambda final: task_loss(candidate_logits(final, correct, incorrect)) * len(last)
        _, acts, grads = model.run_with_cache(tokens.to(device), list(model.node_sites), backward=loss_of, at=last)
        for site in scores:
            effect = (grads[site] * (means[site].to(device) - acts[site])).sum(dim=1)  # (records, width)
            scores[site] += effect.abs().sum(dim=0).double().cpu()
    return {site: s.float() for site, s in scores.items()}


def smallest_passing(loss_at: Callable[[int], float], target: float, total: int, growth: float = 1.25,
                     also: tuple[int, ...] = ()) -> int | None:
    """The smallest n in [0, total] with loss_at(n) <= target, or None if no n tried meets it.

    Loss need not fall as nodes are added (a few masked nodes can fit nonsense labels better than
    the whole model; a node whose partner is still pruned can hurt), so the ranking is scanned on a
    geometric grid from the empty circuit up, with the counts in `also` (the mask's active set)
    among the grid points, and only the bracket below the first passing point is bisected."""
    grid = [0]
    while grid[-1] < total:
        grid.append(min(total, max(grid[-1] + 1, math.ceil(grid[-1] * growth))))
    grid = sorted(set(grid) | {n for n in also if 0 <= n <= total})
    below = None
    for n in grid:
        if loss_at(n) <= target:
            break
        below = n
    else:
        return None
    lo, hi = below, n  # lo fails (or is None when the empty circuit passes), hi passes
    if lo is None:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def find_circuit(model: SparseGPT, splits: TaskSplits, means: Mapping[str, torch.Tensor],
                 settings: PruneSettings, show_progress: bool = True, require_target: bool = True) -> dict:
    """Mask training, then the smallest node count in the ranking by τ whose loss on the choose
    records meets the goal (a margin under the target; the target itself when the full model is
    between the two).

    Returns keep masks, the logit scale and the figures of the search. With require_target=False
    (the controls) a target the full model misses is allowed; when no count meets the goal, the
    count with the lowest loss is returned with `reached: False`."""
    evaluator = CircuitEvaluator(model, splits, means, settings.calibration_steps)
    total = sum(model.node_sites.values())
    full_loss = evaluator.loss(None, "choose")
    target = settings.target_loss
    if require_target and full_loss > target:
        raise SparseCircuitsError(
            f"the full model's loss on task {splits.name} is {full_loss:.4f}, above the target {target}:"
            " no circuit can reach it; raise --target-loss or train a stronger model"
        )
    goal = settings.goal if full_loss <= settings.goal or full_loss > target else target
    started = time.perf_counter()
    if settings.method == "attribution":
        scores, k_final = attribution_scores(model, splits.train, means, settings.batch_pairs), None
    else:
        mask = train_mask(model, splits.train, means, settings, show_progress)
        scores, k_final = mask.scores(), mask.k_final
    ranking_seconds = time.perf_counter() - started
    # the mask's own active set (τ > 0) is a count worth trying; attribution scores are all positive
    active = int(sum((t > 0).sum() for t in scores.values())) if settings.method == "mask" else None
    cache: dict[int, float] = {}

    def loss_at(n: int) -> float:  # on the choose records, before calibration, as the method specifies
        if n not in cache:
            cache[n] = evaluator.loss(keep_top_n(scores, n), "choose")
        return cache[n]

    started = time.perf_counter()
    n_nodes = smallest_passing(loss_at, goal, total, also=(active,) if active is not None else ())
    reached = n_nodes is not None
    if not reached:
        n_nodes = min(cache, key=cache.get)
    keep = keep_top_n(scores, n_nodes)
    loss, accuracy, scale = evaluator.calibrated(keep)
    seconds = {"mask_training" if settings.method == "mask" else "attribution": round(ranking_seconds, 1),
               "node_count": round(time.perf_counter() - started, 1)}
    return {"target_loss": target, "choose_goal": goal, "seconds": seconds, "keep": keep, "scores": scores,
            "logit_scale": scale, "loss_calibrated": loss, "loss": evaluator.loss(keep, "test"),
            "loss_choose": loss_at(n_nodes), "accuracy": accuracy, "reached": reached,
            "active_after_training": active, "loss_active_choose": loss_at(active) if active is not None else None,
            "k_final": k_final,
            "full_loss": full_loss, "evaluations": len(cache), "evaluator": evaluator}


def settings_dict(settings: PruneSettings) -> dict:
    return asdict(settings)


# --- prune end to end: the circuit directory of a run's task ---

RANDOM_CONTROLS = 8


def random_same_size(keep: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random node set with the same number of nodes at every site."""
    out = {}
    for site, k in keep.items():
        chosen = torch.zeros_like(k)
        chosen[torch.randperm(len(k), generator=generator)[: int(k.sum())]] = True
        out[site] = chosen
    return out


def circuit_metrics(evaluator: CircuitEvaluator, keep: Mapping[str, torch.Tensor], scale: float, seed: int = 0) -> dict:
    """Losses on the test records: full model, circuit alone (`loss_circuit`, no calibration, as
    the node count was chosen, with a 95% bootstrap interval over records; `loss_circuit_calibrated`
    with its logit scale), circuit ablated, the empty circuit (every node ablated: bigram table and
    means alone), and random node sets of the same size per site (each with its own fitted logit
    scale, compared with the calibrated circuit)."""
    circuit_raw = evaluator.logits(keep)
    inverse = {site: ~k for site, k in keep.items()}
    ablated = evaluator.logits(inverse)
    generator = torch.Generator().manual_seed(seed)
    # Each random set gets its own logit scale, fitted like the circuit's.
    random_losses = [evaluator.calibrated(random_same_size(keep, generator))[0] for _ in range(RANDOM_CONTROLS)]
    return {
        "loss_full_model": evaluator.loss(None),
        "loss_circuit": float(task_loss(circuit_raw)),
        "loss_circuit_interval": task_loss_interval(circuit_raw, seed),
        "loss_circuit_calibrated": float(task_loss(circuit_raw * scale)),
        "loss_circuit_ablated": float(task_loss(ablated)),
        "loss_circuit_ablated_interval": task_loss_interval(ablated, seed),
        "loss_empty_circuit": evaluator.loss({site: torch.zeros_like(k) for site, k in keep.items()}),
        "loss_random_same_size": sum(random_losses) / len(random_losses),
        "loss_random_draws": [round(x, 5) for x in random_losses],
        "accuracy_full_model": task_accuracy(evaluator.logits(None)),
        "accuracy_circuit": task_accuracy(circuit_raw * scale),
    }


def is_current(out: str | Path, run: Run | str | Path, task: str, settings: PruneSettings) -> bool:
    """Whether `out` holds a circuit of these very weights, task records and prune settings."""
    run = as_run(run)
    path = Path(out) / CIRCUIT_FILE
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
        return (data["model"]["weights_sha256"] == run.weights_sha256
                and data.get("records_sha256") == records_sha256(task)
                # through PruneSettings, so settings added since the circuit was made compare as their defaults
                and PruneSettings(**data["settings"]) == settings and data.get("search_trials", 0) == 0)
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def prune_or_reuse(run: Run | str | Path, task: str, out: str | Path, settings: PruneSettings,
                   show_progress: bool = True) -> "Circuit":
    """The circuit in `out` when it was pruned from these weights, records and settings; else prune
    again into `out` (replacing what an earlier `prune` wrote there)."""
    run = as_run(run)
    if is_current(out, run, task, settings):
        return Circuit.load(out)
    return prune(run, task, out, settings, show_progress=show_progress, force=True)


def write_circuit_dir(out: Path, record: dict, scores: Mapping[str, torch.Tensor], command: str = "prune") -> None:
    with staged_directory(out, command=command) as staging:
        (staging / CIRCUIT_FILE).write_text(json.dumps(record, indent=1))
        atomic_save_tensors(staging / "scores.safetensors", dict(scores))


def prune(run: Run | str | Path, task: str, out: str | Path, settings: PruneSettings | None = None,
          search_trials: int = 0, show_progress: bool = True, force: bool = False,
          data_dir: str | Path | None = None) -> "Circuit":
    """Find, measure and save the circuit of `task` in the model of `run` (a `Run` or its directory).
    `data_dir` is the text mean ablation averages over (default: the run's own data; an imported
    run has none)."""
    settings = settings or PruneSettings()
    settings.validate()
    run, out = as_run(run), Path(out)
    check_output_dir(out, "prune", force, replaces=CIRCUIT_ENTRIES,
                     inputs=[("the run", run.path), ("the task file", task if Path(task).is_file() else None),
                             ("--data", data_dir)])
    with directory_lock(out):
        return _prune(run, task, out, settings, search_trials, show_progress, data_dir)


def _prune(run: Run, task: str, out: Path, settings: PruneSettings, search_trials: int, show_progress: bool,
           data_dir: str | Path | None) -> "Circuit":
    start = time.perf_counter()
    model = run.model()
    with sparse_weight_kernels(model, settings.csr_max_density) as csr_layers:
        splits = load_task_splits(model, task)
        means = ablation_values(model, run, settings.ablation, show_progress, data_dir)
        means_seconds = time.perf_counter() - start
        if search_trials > 0:
            from .search import search_settings

            settings, found = search_settings(model, splits, means, settings, search_trials, show_progress)
        else:
            found = find_circuit(model, splits, means, settings, show_progress)
        keep, scale = found["keep"], found["logit_scale"]
        record = circuit_record(run, model, task, splits, settings, keep, scale, found["evaluator"], data_dir, out)
    record["metrics"].update({"loss_choose": found["loss_choose"], "nodes_active_after_mask_training": found["active_after_training"],
                              "csr_layers": len(csr_layers), "seconds": round(time.perf_counter() - start, 1),
                              "seconds_by_stage": {"load_and_means": round(means_seconds, 1), **found["seconds"]}})
    record["search_trials"] = search_trials
    write_circuit_dir(out, record, found["scores"])
    return Circuit.load(out)


def stored_task_source(task: str, out: Path) -> str:
    """How circuit.json names its task so that it is found from any folder: a built-in name as is;
    a file relative to the circuit folder when it lies inside it, else its absolute path."""
    path = Path(task)
    if not path.is_file():
        return task
    path, folder = path.resolve(), Path(out).resolve()
    return str(path.relative_to(folder)) if folder in path.parents else str(path)


def circuit_record(run: Run, model: SparseGPT, task: str, splits: TaskSplits, settings: PruneSettings,
                   keep: Mapping[str, torch.Tensor], scale: float, evaluator: CircuitEvaluator,
                   data_dir: str | Path | None, out: Path) -> dict:
    """circuit.json's content for these kept nodes: nodes, edges and the test-record metrics."""
    nodes, edges = nodes_of(keep), circuit_edges(model, keep)
    metrics = circuit_metrics(evaluator, keep, scale, settings.seed)
    metrics.update({"n_nodes": len(nodes), "n_edges": len(edges), "logit_scale": scale})
    return {
        "format": 1,
        "task": splits.name,
        "task_source": stored_task_source(task, out),
        "model": {"run_dir": str(run.path.resolve()), "name": run.path.name, "config_hash": run.config.hash(),
                  "weights_sha256": run.weights_sha256, **({"step": run.step} if run.step is not None else {})},
        "target_loss": settings.target_loss,
        "ablation": settings.ablation,
        "means_data": str(Path(data_dir).resolve()) if data_dir is not None else None,  # None: the run's own data
        "records": splits.counts(),
        "records_sha256": records_sha256(task),
        "nodes": nodes,
        "edges": edges,
        "metrics": metrics,
        "settings": settings_dict(settings),
        "search_trials": 0,
    }
