"""Finding the smallest set of nodes that still does a task (docs/method.md section 3); `prune`
(circuits/prune.py) does it end to end for a run and a task and writes the circuit directory.

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

import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from ..errors import SparseCircuitsError
from ..model.gpt import SparseGPT
from ..tasks.records import TaskSplits, TokenizedTask, candidate_logits, pair_logits, task_accuracy, task_loss
from .masks import NodeMask, ablation_hooks, keep_top_n
from .settings import TARGET_LOSS, PruneSettings




CHANCE_FRACTION = 0.9  # a full-model loss above this fraction of ln 2 (chance) means the model does not do the task


class NoCircuitToFind(SparseCircuitsError):
    """The task and target leave nothing to prune: said before any mask is trained."""


class TargetUnreachable(NoCircuitToFind):
    """The full model itself misses the target: no circuit can reach it."""


class EmptyCircuitSuffices(NoCircuitToFind):
    """Every node ablated already meets the target: the bigram table and the node means answer the task."""


def full_model_loss(model: SparseGPT, splits: TaskSplits) -> float:
    """The full model's task loss on the choose records, where node counts are chosen."""
    return float(task_loss(pair_logits(model, splits["choose"])))


def require_reachable(full_loss: float, settings: PruneSettings, task: str) -> None:
    """Raise TargetUnreachable, with the target the model does allow, when the full model misses the target."""
    target = settings.target_loss
    if full_loss <= target:
        return
    if full_loss >= CHANCE_FRACTION * math.log(2):
        advice = (f"it is near chance ({math.log(2):.3f}): the model does not do this task; train longer or a larger"
                  " config (`sparsecircuits tasks eval RUN` lists the tasks a model does)")
    else:
        advice = f"the lowest target it allows is {math.ceil(full_loss * 1000) / 1000:.3f} (--target-loss), or train longer"
    raise TargetUnreachable(f"the full model's loss on task {task} is {full_loss:.4f} on the choose records, above the"
                            f" target {target}: no circuit can reach it; {advice}")


def require_something_to_prune(empty_loss: float, goal: float, settings: PruneSettings, task: str) -> None:
    """Raise EmptyCircuitSuffices when the empty circuit already meets the goal the node count is chosen at."""
    if empty_loss <= goal:
        raise EmptyCircuitSuffices(
            f"the empty circuit (every node ablated to its {settings.ablation}) already meets the target on task {task}:"
            f" loss {empty_loss:.4f} on the choose records, so the bigram table answers it and there is nothing to prune;"
            f" a target below {empty_loss / (goal / settings.target_loss):.4f} (--target-loss) leaves nodes to find")


class AdaptivePenalty:
    """The node penalty k as a controller on the mask's task loss: a step of log k against the
    relative gap between the loss (averaged over recent batches) and the goal. Missing the goal
    lowers k, so nodes the task needs come back; clearing it with room raises k, so more are pruned.
    Since Adam scales each τ's step by its own gradient history, only the ratio of the penalty's
    gradient to the task's matters, and k settles where the active set just meets the goal. The rate
    is slow against the lag of the mask: pruned nodes take tens of steps to return, and a k that
    falls all that time ends orders of magnitude too low, with a circuit too large."""

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
    means = {site: m.to(device) for site, m in means.items()}
    gates: dict[str, torch.Tensor] = {}

    def masked(x: torch.Tensor, site: str) -> torch.Tensor:
        gate = gates[site]
        return x * gate + means[site] * (1 - gate)

    def final_logits(tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return model(tokens, at=last)

    def active() -> torch.Tensor:
        gates.update(mask.gates())
        return mask.active_count(gates)

    with model.hooks({site: masked for site in model.node_sites}):
        learn_mask(model, task, mask, active, final_logits, settings, generator, show_progress)
    return mask


def learn_mask(model: SparseGPT, task: TokenizedTask, mask: torch.nn.Module, active: Callable[[], torch.Tensor],
               final_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], settings: PruneSettings,
               generator: torch.Generator, show_progress: bool) -> None:
    """The mask training loop shared by nodes and edges: each step `active()` sets the gates from τ and
    returns how many are on, `final_logits(tokens, last)` runs the model under them; the loss is the task
    loss plus k times the active count, with the adaptive k, AdamW, RMS clip and τ clamped to [-1, 1]."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(mask.parameters(), lr=settings.lr, betas=(0.9, settings.beta2),
                                  weight_decay=settings.weight_decay)
    warmup = max(1, round(settings.warmup_fraction * settings.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))))
    model.requires_grad_(False)
    penalty = AdaptivePenalty(settings)
    batch_size = min(len(task), 2 * settings.batch_pairs)
    bar = tqdm(range(settings.steps), desc=f"mask {task.name}", unit="step", disable=not show_progress, file=sys.stderr)
    for step in bar:
        indices = torch.randperm(len(task), generator=generator)[:batch_size]
        n_active = active()
        logits = torch.cat([candidate_logits(final_logits(tokens.to(device), last), correct, incorrect)
                            for tokens, last, correct, incorrect in map(task.batch, task.width_groups(indices))])
        loss = task_loss(logits)
        (loss + penalty.k * n_active).backward()
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
            bar.set_postfix(task_loss=f"{loss.item():.3f}", active=int(n_active.item()), k=f"{penalty.k:.1e}")
    mask.k_final = penalty.k


def attribution_scores(model: SparseGPT, task: TokenizedTask, means: Mapping[str, torch.Tensor],
                       batch_pairs: int = 64) -> dict[str, torch.Tensor]:
    """Every node's attribution-patching score on the task's records: the first-order estimate of
    how much mean-ablating that node alone raises the task loss, gradient x (mean - activation)
    summed over positions and records. Signed, not in absolute value: a node whose ablation would
    lower the loss (a path the answer does not depend on, which hurts the records it disagrees
    with more than it helps the others) ranks last, not first."""
    device = next(model.parameters()).device
    totals = {site: torch.zeros(width, dtype=torch.float64) for site, width in model.node_sites.items()}
    model.requires_grad_(False)
    for start in range(0, len(task), 2 * batch_pairs):
        tokens, last, correct, incorrect = task.batch(range(start, min(start + 2 * batch_pairs, len(task))))
        loss_of = lambda final: task_loss(candidate_logits(final, correct, incorrect)) * len(last)  # summed over records
        _, acts, grads = model.run_with_cache(tokens.to(device), list(model.node_sites), backward=loss_of, at=last)
        for site in totals:
            totals[site] += (grads[site] * (means[site].to(device) - acts[site])).sum(dim=(0, 1)).double().cpu()
    return {site: t.float() for site, t in totals.items()}


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
                 settings: PruneSettings, show_progress: bool = True, require_target: bool = True,
                 scores: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Mask training, then the smallest node count in the ranking by τ whose loss on the choose
    records meets the goal (a margin under the target; the target itself when the full model is
    between the two).

    Returns keep masks, the logit scale and the figures of the search. With require_target=False
    (the controls) a target the full model misses is allowed; when no count meets the goal, the
    count with the lowest loss is returned with `reached: False`. With it, a full model that misses
    the target (TargetUnreachable) or an empty circuit that meets it (EmptyCircuitSuffices) raises
    before the mask is trained. `scores`: a ranking already learned on `splits.train` with these
    settings (a circuit's scores.safetensors), used instead of training the mask again."""
    evaluator = CircuitEvaluator(model, splits, means, settings.calibration_steps)
    total = sum(model.node_sites.values())
    full_loss = evaluator.loss(None, "choose")
    target = settings.target_loss
    goal = settings.goal if full_loss <= settings.goal or full_loss > target else target
    if require_target:  # before the mask is trained: a run that cannot give a circuit says so at once
        require_reachable(full_loss, settings, splits.name)
        empty = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
        require_something_to_prune(evaluator.loss(empty, "choose"), goal, settings, splits.name)
    started = time.perf_counter()
    if scores is not None:
        k_final = None
    elif settings.method == "attribution":
        scores, k_final = attribution_scores(model, splits.train, means, settings.batch_pairs), None
    else:
        mask = train_mask(model, splits.train, means, settings, show_progress)
        scores, k_final = {site: tau.cpu() for site, tau in mask.scores().items()}, mask.k_final  # keep vectors live on the CPU
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
