"""Gaussian-weighted prompt aggregation (PromptSRC, docs/methods.md §4.7).

Epoch e (1-based) gets weight g_e ∝ N(e; μ, σ²), normalised over e = 1..E. After each epoch the prompt tensors
are added to a running sum with that weight; after the last epoch the sum replaces the prompts.
:class:`GaussianPromptAggregation` gives a method this behaviour (and keeps the sum in its resume state).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# PromptSRC's few-shot configs (vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml): μ45 σ5 for these datasets, μ30 σ30
# for the others.
FEW_SHOT_NARROW_GPA = frozenset({"stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"})


def few_shot_gpa(dataset: str) -> tuple[float, float]:
    """(mean, std) of PromptSRC's few-shot GPA for ``dataset``."""
    return (45.0, 5.0) if dataset in FEW_SHOT_NARROW_GPA else (30.0, 30.0)


def gpa_weights(num_epochs: int, mean: float, std: float) -> list[float]:
    """Normalised weights for epochs 1..num_epochs (float64 arithmetic).

    When every density underflows to 0 (μ far outside 1..E with a tiny σ) the closest epoch gets weight 1.
    """
    if num_epochs < 1 or std <= 0:
        raise ValueError(f"GPA needs num_epochs >= 1 and std > 0 (got {num_epochs}, {std})")
    dens = [math.exp(-((e - mean) ** 2) / (2.0 * std * std)) / (std * math.sqrt(2 * math.pi))
            for e in range(1, num_epochs + 1)]
    total = sum(dens)
    if total == 0.0:
        best = min(range(num_epochs), key=lambda i: abs(i + 1 - mean))
        return [1.0 if i == best else 0.0 for i in range(num_epochs)]
    return [d / total for d in dens]


class GaussianPromptAggregator:
    """Running weighted sum of named tensors (torch tensors; kept in float32, cast back on read)."""

    def __init__(self, num_epochs: int, mean: float, std: float):
        self.weights = gpa_weights(num_epochs, mean, std)
        self.mean, self.std = mean, std
        self.sum: dict[str, Any] = {}
        self.epochs_added = 0

    def add(self, epoch: int, tensors: Mapping[str, Any]) -> None:
        """Accumulate the tensors of finished epoch ``epoch`` (1-based)."""
        w = self.weights[epoch - 1]
        for name, t in tensors.items():
            contrib = t.detach().float() * w
            self.sum[name] = contrib if name not in self.sum else self.sum[name] + contrib
        self.epochs_added = epoch

    def result(self, like: Mapping[str, Any]) -> dict[str, Any]:
        """The aggregate, cast to the dtype/device of the tensors in ``like``."""
        return {name: self.sum[name].to(dtype=t.dtype, device=t.device) for name, t in like.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_added": self.epochs_added, "sum": dict(self.sum)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epochs_added = int(state["epochs_added"])
        self.sum = dict(state["sum"])


class GaussianPromptAggregation:
    """Mixin for a :class:`~dplbench.engine.method.PromptMethod` whose options have ``gpa`` (on/off), ``gpa_mean``
    and ``gpa_std``: after every epoch the learned tensors join the running sum with that epoch's weight, after
    the last epoch the aggregate replaces them, and a mid-run checkpoint carries the sum. List it before the
    method base class."""

    gpa: GaussianPromptAggregator | None = None

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        o = self.options
        if not o.gpa:
            return
        if self.gpa is None:
            self.gpa = GaussianPromptAggregator(num_epochs, o.gpa_mean, o.gpa_std)
        self.gpa.add(epoch, dict(self.named_parameters()))
        if epoch == num_epochs:
            self.load_learned_state(self.gpa.result(dict(self.named_parameters())))

    def resume_state(self) -> dict[str, Any]:
        state = super().resume_state()
        if self.gpa is not None:
            state["gpa"] = self.gpa.state_dict()
        return state

    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        super().load_resume_state(state)
        if "gpa" in state:
            self.gpa = GaussianPromptAggregator(self.context.num_epochs, self.options.gpa_mean, self.options.gpa_std)
            self.gpa.load_state_dict(state["gpa"])
