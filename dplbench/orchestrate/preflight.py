"""Checks made before any trial is scheduled: Ray does not reject an impossible resource request, it waits for
it forever (a GPU on a CPU machine, more CPUs per trial than a node has). Each check raises one readable line."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dplbench.errors import ConfigError, DplbenchError

if TYPE_CHECKING:
    from dplbench.config import Config

log = logging.getLogger(__name__)


class ResourceError(DplbenchError):
    """The requested per-trial resources cannot be satisfied by the Ray cluster."""


def trial_resources(cfg: Config) -> dict[str, float]:
    """Validated ``{"cpu": c, "gpu": g}`` request of one trial."""
    cpus, gpus = float(cfg.ray.cpus_per_trial), float(cfg.ray.gpus_per_trial)
    if cpus <= 0:
        raise ConfigError(f"ray.cpus_per_trial must be > 0, got {cpus:g}")
    if gpus < 0:
        raise ConfigError(f"ray.gpus_per_trial must be >= 0, got {gpus:g}")
    if gpus > 1 and not gpus.is_integer():
        raise ConfigError(f"ray.gpus_per_trial above 1 must be a whole number, got {gpus:g}")
    if cfg.ray.max_concurrent is not None and int(cfg.ray.max_concurrent) < 1:
        raise ConfigError(f"ray.max_concurrent must be >= 1 or null, got {cfg.ray.max_concurrent}")
    device = str(cfg.run.device)
    if device.startswith("cuda") and gpus == 0:
        raise ConfigError(f"run.device={device} needs a GPU per trial: set ray.gpus_per_trial (e.g. 1 or 0.5), "
                          "or ray.enabled=false to run in this process")
    return {"cpu": cpus, "gpu": gpus}


def check_resources(request: Mapping[str, float], available: Mapping[str, float], *, where: str) -> None:
    """Fail at once when no single node can ever hold one trial.

    ``available`` is ``ray.cluster_resources()`` (keys "CPU", "GPU"); per-node limits are not checked beyond the
    cluster totals, which is exact for the single-node case dplbench starts itself.
    """
    have_cpu, have_gpu = float(available.get("CPU", 0)), float(available.get("GPU", 0))
    if request.get("gpu", 0) > have_gpu:
        hint = ("it has no GPU: set ray.gpus_per_trial=0 (CPU run) or run on a machine with a GPU"
                if have_gpu == 0 else f"lower ray.gpus_per_trial to at most {have_gpu:g}")
        raise ResourceError(f"ray.gpus_per_trial={request['gpu']:g} cannot be satisfied by {where} "
                            f"(CPU {have_cpu:g}, GPU {have_gpu:g}): {hint}")
    if request.get("cpu", 0) > have_cpu:
        raise ResourceError(f"ray.cpus_per_trial={request['cpu']:g} cannot be satisfied by {where} "
                            f"(CPU {have_cpu:g}, GPU {have_gpu:g}): lower ray.cpus_per_trial to at most "
                            f"{have_cpu:g}")


def warn_unused_gpus(request: Mapping[str, float], available: Mapping[str, float], device: str) -> None:
    if request.get("gpu", 0) == 0 and float(available.get("GPU", 0)) > 0 and device == "auto":
        log.warning("the Ray cluster has %g GPU(s) but ray.gpus_per_trial=0: trials run on CPU "
                    "(set ray.gpus_per_trial=1 or a fraction such as 0.5)", float(available["GPU"]))


def check_before_start(cfg: Config) -> None:
    """What a run needs outside itself, checked in seconds before Ray or MLflow start: a writable output folder,
    a reachable ``ray.address`` and a reachable tracking server (each failure is one line)."""
    from dplbench.orchestrate import tracking
    from dplbench.orchestrate.session import ensure_reachable
    from dplbench.workspace import Workspace

    Workspace.at(cfg.run.output_dir).require_writable()
    check_llm_methods(cfg)
    if cfg.ray.enabled and cfg.ray.address:
        ensure_reachable(str(cfg.ray.address))
    uri = tracking.tracking_uri(cfg)
    if uri is not None:
        tracking.require_reachable(uri)


def check_llm_methods(cfg: Config) -> None:
    """A method built on an LLM needs the ``[llm]`` extra, ``llm.path`` and, when set, a valid ``llm.questions``
    file (one line each, before anything starts)."""
    from dplbench.catalog import METHODS
    from dplbench.llm import LLM_METHODS, check_llm_path, require_llm_extra
    from dplbench.llm.questions import read_question_file

    selected = [m for m in cfg.methods if m in METHODS and METHODS.canonical(m) in LLM_METHODS]
    if selected:
        require_llm_extra(f"method {selected[0]!r}")
        check_llm_path(cfg.llm.path)
        if cfg.llm.questions:
            read_question_file(cfg.llm.questions)
