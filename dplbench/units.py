"""Units of work: a protocol expanded into (method x dataset x shots x seed) with the run's overrides.

A transfer protocol (cross-dataset, domain generalisation) trains one source model per (method, source, shots,
seed): its unit carries every target and is never split per target. Both transfer protocols use the
``cross_dataset`` recipe so that execution can share the source model between them.

A unit's ``config`` holds exactly the settings that change its numbers; ``config_hash`` names its result file, so
rerunning a command finds finished units and a changed setting gives a new file instead of overwriting. The
settings that never change numbers (device, data root, workers, weights cache, output folder) are the
:class:`~dplbench.runtime.Runtime`, passed beside the unit; :data:`HASH_EXCLUDE` is derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from dplbench.errors import ConfigError
from dplbench.results import config_hash as _config_hash
from dplbench.runtime import HASH_EXCLUDE

if TYPE_CHECKING:
    from dplbench.config import BackboneConfig, Config, DataConfig, TrainConfig

HASHED_SECTIONS = ("backbone", "data", "train", "run")


@dataclass(frozen=True)
class UnitSettings:
    """A unit's result-relevant settings, typed: its hashed config sections over the config dataclasses' defaults.

    The hash-excluded fields (``backbone.cache_dir``, ``data.root``, ``data.num_workers``) keep their defaults
    here; their values come from the :class:`~dplbench.runtime.Runtime`.
    """

    backbone: BackboneConfig
    data: DataConfig
    train: TrainConfig


@dataclass(frozen=True)
class Unit:
    protocol: str
    kind: str
    recipe: str
    method: str
    dataset: str                      # the training dataset (the source of a transfer protocol)
    seed: int
    shots: int | None
    targets: tuple[str, ...] = ()     # transfer protocols: evaluated after training on ``dataset``
    options: Mapping[str, Any] = field(default_factory=dict)    # method option overrides (method.* and sweeps)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # result-relevant overrides, for display
    config: Mapping[str, Any] = field(default_factory=dict)     # everything that determines the result

    def __hash__(self) -> int:
        return hash(self.config_hash)

    @cached_property
    def config_hash(self) -> str:
        return _config_hash(self.config)

    @cached_property
    def settings(self) -> UnitSettings:
        """Built once per unit object (an OmegaConf merge per section costs ~0.1 s, and a unit reads it several
        times); ``config`` is not changed after the unit is made."""
        from omegaconf import OmegaConf

        from dplbench.config import BackboneConfig, DataConfig, TrainConfig

        def typed(schema: type, section: str) -> Any:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema),
                                                       dict(self.config.get(section) or {})))

        return UnitSettings(typed(BackboneConfig, "backbone"), typed(DataConfig, "data"),
                            typed(TrainConfig, "train"))

    @property
    def protocol_params(self) -> dict[str, Any]:
        """Kind-specific settings of the unit's protocol (e.g. the long-tail imbalance)."""
        return dict(self.config.get("protocol_params") or {})

    @property
    def name(self) -> str:
        """Short, path-safe, deterministic name (trial directories, MLflow run names)."""
        shots = "full" if self.shots is None else f"k{self.shots}"
        return f"{self.method}-{self.dataset}-{shots}-s{self.seed}-{self.config_hash[:8]}"

    def unit_dict(self) -> dict[str, Any]:
        """The ``unit`` block of the result file."""
        return {"protocol": self.protocol, "method": self.method, "dataset": self.dataset, "seed": self.seed,
                "shots": self.shots, "overrides": dict(self.overrides)}


def make_unit(*, protocol: str, kind: str, recipe: str, method: str, dataset: str, seed: int, shots: int | None,
              targets: Sequence[str] = (), options: Mapping[str, Any] | None = None,
              settings: Mapping[str, Mapping[str, Any]] | None = None,
              protocol_params: Mapping[str, Any] | None = None,
              overrides: Mapping[str, Any] | None = None,
              knowledge: Mapping[str, Any] | None = None) -> Unit:
    """A self-sufficient unit: its ``config`` holds every result-relevant setting (``settings`` = the hashed
    backbone / data / train sections; absent keys mean the config dataclasses' defaults; ``knowledge`` = what an
    LLM-based method's knowledge comes from, see :func:`knowledge_sources`)."""
    kind, recipe = str(kind), str(recipe)
    options = dict(options or {})
    config = {"protocol": protocol, "kind": kind, "recipe": recipe, "method": method, "dataset": dataset,
              "targets": list(targets), "seed": seed, "shots": shots, "options": options,
              "protocol_params": dict(protocol_params or {}), **{k: dict(v) for k, v in (settings or {}).items()}}
    if knowledge:
        config["knowledge"] = dict(knowledge)
    return Unit(protocol=protocol, kind=kind, recipe=recipe, method=method, dataset=dataset, seed=seed, shots=shots,
                targets=tuple(targets), options=options, overrides=dict(sorted((overrides or {}).items())),
                config=config)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def to_plain(node: Any) -> Any:
    """OmegaConf nodes and nested mappings -> plain (resolved) dicts and lists; other values unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {key: to_plain(value) for key, value in node.items()}
    return node


def unit_settings_keys(config: Mapping[str, Any]) -> set[str]:
    """The dotted keys of a unit config's settings sections (``train.lr``, ...)."""
    return {f"{section}.{key}" for section in HASHED_SECTIONS for key in (config.get(section) or {})}


# Opt-in sub-sections (key -> the field that switches them on): while off they are left out of a unit's config, so
# adding an opt-in feature never changes the hash (and the result file) of a unit that does not use it.
OPT_IN = {"train.feature_bank": "views"}


def _is_off(key: str, value: Any) -> bool:
    return key in OPT_IN and isinstance(value, Mapping) and value.get(OPT_IN[key]) is None


def _hashed_settings(cfg: Config) -> dict[str, dict[str, Any]]:
    """The result-relevant part of the backbone / data / train / run sections."""
    sections: dict[str, dict[str, Any]] = {}
    for section in HASHED_SECTIONS:
        values = to_plain(cfg.get(section)) or {}
        kept = {k: v for k, v in values.items()
                if f"{section}.{k}" not in HASH_EXCLUDE and not _is_off(f"{section}.{k}", v)}
        if kept:
            sections[section] = kept
    return sections


def _default_settings() -> dict[str, dict[str, Any]]:
    from omegaconf import OmegaConf

    from dplbench.config import Config

    return _hashed_settings(OmegaConf.structured(Config))


def _method_option_names(method: str) -> set[str] | None:
    """Top-level option names of a method (None when it declares no Options dataclass)."""
    import dataclasses

    from dplbench.catalog import METHODS

    options_cls = getattr(METHODS.get(method), "Options", None)
    if options_cls is None or not dataclasses.is_dataclass(options_cls):
        return None
    return {f.name for f in dataclasses.fields(options_cls)}


def options_for(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``method.*`` overrides that this method accepts (the others belong to other selected methods)."""
    if not options:
        return {}
    names = _method_option_names(method)
    return dict(options) if names is None else {k: v for k, v in options.items() if k in names}


def _datasets(cfg: Config, protocol: Any) -> tuple[list[str], list[str]]:
    """(training datasets, targets) of the run."""
    from dplbench.catalog import DATASETS

    suite = protocol.suite(cfg.get("suite") or "toy")
    datasets = list(to_plain(cfg.get("datasets")) or [])
    if protocol.is_transfer:
        source = cfg.get("source")
        sources = datasets or ([source] if source else [suite["source"]])
        targets = list(to_plain(cfg.get("targets")) or []) or list(suite["targets"])
    else:
        sources, targets = datasets or list(suite["datasets"]), []
    sources = [DATASETS.canonical(d) for d in sources]
    targets = [DATASETS.canonical(d) for d in targets]
    if not sources:
        raise ConfigError(f"protocol {protocol.name!r}: no datasets selected")
    return list(dict.fromkeys(sources)), list(dict.fromkeys(targets))


def knowledge_sources(cfg: Config) -> dict[str, Any] | None:
    """The content identity of an LLM method's knowledge: the LLM's digest (``llm.path``) and the question file's
    sha256 (null: dplbench's own questions). ``llm.path`` and ``llm.questions`` are runtime paths, outside the hash;
    these digests are not, so another LLM or question file gives new units instead of reusing finished ones.
    None when ``llm.path`` is unset (the run itself refuses that before starting)."""
    from dplbench.llm import llm_identity
    from dplbench.llm.questions import read_question_file

    if not cfg.llm.path:
        return None
    questions = read_question_file(cfg.llm.questions)[1] if cfg.llm.questions else None
    return {"llm": llm_identity(cfg.llm.path)["id"], "questions_sha256": questions}


def expand_units(cfg: Config, *, extra_overrides: Mapping[str, Any] | None = None) -> list[Unit]:
    """All units of a resolved config, in a stable order (method, dataset, shots, seed), duplicates removed.

    ``extra_overrides`` (e.g. the values of one sweep trial, already applied to ``cfg``) are added to every unit's
    displayed overrides.
    """
    from dplbench.catalog import METHODS, PROTOCOLS

    protocol = PROTOCOLS.get(PROTOCOLS.canonical(cfg.protocol))
    requested = list(to_plain(cfg.get("methods")) or [])
    methods = [METHODS.canonical(m) for m in requested] if requested else protocol.registered_methods()
    if not methods:
        raise ConfigError(f"protocol {protocol.name!r}: no methods selected (`dplbench ls methods` lists them)")
    datasets, targets = _datasets(cfg, protocol)
    seeds = [int(s) for s in (to_plain(cfg.get("seeds")) or protocol.seeds)]
    shots = [None if k is None else int(k) for k in (to_plain(cfg.get("shots")) or protocol.shots)]
    options = to_plain(cfg.get("method")) or {}
    settings = _hashed_settings(cfg)
    defaults = _default_settings()
    defaults = flatten(defaults)
    defaults["train.epoch_scale"] = protocol.suite(str(cfg.get("suite") or "toy")).get("epoch_scale")
    changed = {key: value for key, value in flatten(settings).items() if defaults.get(key) != value}
    from dplbench.llm import LLM_METHODS

    knowledge = knowledge_sources(cfg) if set(methods) & set(LLM_METHODS) else None
    units: dict[str, Unit] = {}
    for method in dict.fromkeys(methods):
        method_options = options_for(method, options)
        overrides = {**changed, **{f"method.{k}": v for k, v in flatten(method_options).items()},
                     **dict(extra_overrides or {})}
        for dataset in datasets:
            for k in shots:
                for seed in seeds:
                    unit = make_unit(protocol=protocol.name, kind=protocol.kind, recipe=protocol.recipe,
                                     method=method, dataset=dataset, seed=seed, shots=k, targets=targets,
                                     options=method_options, settings=settings,
                                     protocol_params=protocol.params, overrides=overrides,
                                     knowledge=knowledge if method in LLM_METHODS else None)
                    units.setdefault(unit.config_hash, unit)
    return list(units.values())
