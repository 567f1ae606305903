"""Config sections owned by the orchestrator (``ray.*``, ``tracking.*``, ``sweep.*``). Pure dataclasses, no imports
of Ray or MLflow: :mod:`dplbench.config` embeds them in the global structured config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from dplbench.vocabulary import MetricMode, Sampler, SearchKind


@dataclass
class RayConfig:
    enabled: bool = True                  # false = run the units one after another in this process (debugging)
    address: Optional[str] = None         # attach to a running cluster ("auto", "ray://host:10001"); null = local
    num_cpus: Optional[int] = None        # CPUs of the local instance dplbench starts (null = all cores)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0           # fractional GPUs share memory: keep max_concurrent in check
    max_concurrent: Optional[int] = None  # at most this many trials at once (null = as many as resources allow)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None             # null = sqlite:////<abs output_dir>/mlflow.db; or http://host:5000
    experiment: str = "dplbench"


@dataclass
class SweepConfig:
    name: Optional[str] = None            # a definition in protocols/sweeps/<name>.yaml (its values are defaults)
    params: dict[str, Any] = field(default_factory=dict)  # config key -> list of values (grid) or
    #                                        {type: uniform|loguniform|int|choice, low, high | values} (optuna)
    search: Optional[SearchKind] = None   # null = the definition's, else grid
    num_samples: Optional[int] = None     # optuna: number of trials (grid: the product of the value lists)
    sampler: Sampler = Sampler.tpe        # the Optuna sampler
    sampler_seed: int = 0                 # recorded in the sweep summary and MLflow
    metric: Optional[str] = None          # null = the protocol's metric (hm for base-to-novel)
    mode: Optional[MetricMode] = None     # null = the protocol's
