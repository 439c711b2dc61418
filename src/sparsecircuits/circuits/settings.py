"""What `prune` is asked for: PruneSettings, without torch (the CLI's defaults read it)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..config import CSR_MAX_DENSITY
from ..errors import SparseCircuitsError

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
    # the adaptive k rises by up to exp(penalty_rate) per step and falls 4x as fast; faster (0.1), a miss
    # lasting the ~20 steps τ takes to bring pruned nodes back wound k down 1,000-fold, and circuits
    # from two seeds differed 2x in size (docs/results.md, "The penalty's rate")
    penalty_rate: float = 0.03
    init_mean: float = 0.1  # τ starts at N(init_mean, init_std)
    init_std: float = 0.01
    temperature: float = 1.0
    calibration_steps: int = 16
    seed: int = 0
    csr_max_density: float = CSR_MAX_DENSITY  # frozen layers at most this dense multiply through CSR kernels
    # "mask": rank nodes by a learned mask; "attribution": by attribution patching, the first-order
    # estimate of how much ablating each node raises the loss (one forward and backward per batch)
    method: str = "mask"
    # after the nodes, prune the weight edges between them (circuits/edges.py) and keep both circuits
    edges: bool = False

    @classmethod
    def from_record(cls, recorded: dict, where: str) -> "PruneSettings":
        """The settings a circuit.json records, checked: an unknown key, a value of the wrong type or
        out of range is an error naming `where`."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(recorded) - set(fields))
        if unknown:
            raise SparseCircuitsError(f"{where}: settings.{unknown[0]} is not a pruning setting: prune the task again")
        for key, value in recorded.items():
            kind = {"float": (int, float), "int": int, "str": str, "bool": bool}[fields[key]]
            if not isinstance(value, kind) or (kind != bool and isinstance(value, bool)) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise SparseCircuitsError(f"{where}: settings.{key} must be {fields[key]}, not {str(value)[:40]}:"
                                          " prune the task again")
        settings = cls(**recorded)
        try:
            settings.validate()
        except SparseCircuitsError as err:
            raise SparseCircuitsError(f"{where}: {err}: prune the task again") from None
        return settings

    def validate(self) -> None:
        if self.method not in ("mask", "attribution"):
            raise SparseCircuitsError(f"--method must be 'mask' or 'attribution', not '{self.method}'")
        if self.edges and self.method != "mask":
            raise SparseCircuitsError("--edges learns a mask over the circuit's edges: use it with --method mask")
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
