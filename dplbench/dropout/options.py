"""Option records of the DroPLe pieces (docs/methods.md §5.1.7), shared by the adapters built on them (``drople``,
``drople_llamp``): token dropout, residual entropy, MAG and the consistency terms, plus the helpers that build
them from nested overrides with one-line errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from dplbench.dropout.importance import SCORES
from dplbench.errors import ConfigError

BRANCHES = ("vision", "text")


@dataclass
class IWTDOptions:
    mode: str = "gauss_mult"          # gauss_mult | zero | zero_rescale | uniform | off
    p_max: float = 0.5                # drop probability of the least important eligible token
    p_min: float = 0.1                # ... of the most important one
    p_const: float = 0.3              # mode=uniform: the same p for every eligible token
    sigma: float = 0.03               # gauss_mult / uniform: multiplier ~ N(1, sigma²)
    scores: list[str] = field(default_factory=lambda: list(SCORES))   # subset of self, cls, mag (mean)
    branches: list[str] = field(default_factory=lambda: list(BRANCHES))  # subset of vision, text
    layers: Optional[list[int]] = None    # block indices; null = every prompted layer of each branch
    perturb_inserted_prompts: bool = False  # deviation: perturb the fresh deep prompts at the next layer's input


@dataclass
class ResOptions:
    weight: float = 0.05              # w_res in L_res = −w·(H(p_t) + H(p_v))
    lam: float = 0.1                  # λ_res, the end point of the λ annealing
    fix_lam: bool = False             # true: λ = λ_res in every epoch


@dataclass
class MAGOptions:
    num_tokens: int = 64
    tau: float = 1.0                  # multiplier of T·uᵀ (no 1/√d)
    loss_weight: float = 30.0


@dataclass
class ConsistencyOptions:
    text_l1: float = 25.0
    image_l1: float = 10.0
    kd: float = 2.5                   # 1.0 = PromptSRC's KL weight


def nested_options(cls: type, value: Any, name: str, method: str) -> Any:
    """A nested options dataclass from itself or from a mapping of overrides (merged over the defaults)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"option {name!r} must be a mapping, got {value!r}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(f'{name}.{k}' for k in unknown)} for method {method!r}; "
                          f"valid: {', '.join(f'{name}.{k}' for k in sorted(valid))}")
    return cls(**{k: (list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v)
                  for k, v in value.items()})


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"invalid {name} {value!r}; valid choices: {', '.join(choices)}")


def check_subset(name: str, values: list[str], choices: tuple[str, ...], *, allow_empty: bool) -> None:
    bad = [v for v in values if v not in choices]
    if bad or (not values and not allow_empty) or len(set(values)) != len(values):
        raise ConfigError(f"invalid {name} {values!r}; a non-repeating subset of: {', '.join(choices)}")
