"""Where and how a unit runs, as opposed to what it computes.

:class:`Runtime` holds exactly the settings that never change a unit's numbers: the device, the data root (and per-dataset folders), the
loader workers, the backbone weights cache and the output folder (with ``run.force``). Everything else a unit
needs is in its hashed config (:mod:`dplbench.units`), so ``execute_unit(unit, runtime)`` is reproducible from the
result file alone. :data:`HASH_EXCLUDE`, the config keys left out of a unit's hash, is derived from this class, so
a new runtime setting cannot be forgotten in one of the two places.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dplbench.workspace import Workspace

if TYPE_CHECKING:
    from dplbench.config import Config


def _key(dotted: str) -> Any:
    return field(metadata={"key": dotted})


@dataclass(frozen=True)
class Runtime:
    output_dir: str = _key("run.output_dir")
    force: bool = _key("run.force")
    device: str = _key("run.device")
    data_root: str | None = _key("data.root")
    data_paths: Mapping[str, str] = _key("data.paths")  # dataset name -> its folder
    num_workers: int = _key("data.num_workers")
    weights_cache_dir: str | None = _key("backbone.cache_dir")
    log_level: str = _key("run.log_level")  # Ray's / MLflow's console logging (orchestrate/console.py)
    command: tuple[str, ...] = _key("run.command")  # the user's command line (a Ray worker's argv is Ray's)
    llm_path: str | None = _key("llm.path")  # the LLM checkpoint folder of LLM-based methods (never downloaded)
    llm_questions: str | None = _key("llm.questions")  # a question file of the knowledge cache (None = dplbench's)
    # (the contents of llm.path and llm.questions are hashed: dplbench.units.knowledge_sources)

    @classmethod
    def from_config(cls, cfg: Config | None = None, **changes: Any) -> Runtime:
        """The runtime part of a resolved config (the structured defaults when ``cfg`` is None)."""
        if cfg is None:
            from omegaconf import OmegaConf

            from dplbench.config import Config

            cfg = OmegaConf.structured(Config)
        values = {}
        for f in fields(cls):
            section, key = f.metadata["key"].split(".")
            value = cfg[section][key]
            values[f.name] = dict(value) if hasattr(value, "items") else value
        values["command"] = tuple(str(a) for a in values["command"])
        return replace(cls(**values), **changes)

    @property
    def workspace(self) -> Workspace:
        return Workspace.at(self.output_dir)


HASH_EXCLUDE: frozenset[str] = frozenset(f.metadata["key"] for f in fields(Runtime))
