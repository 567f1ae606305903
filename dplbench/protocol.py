"""Protocol definitions: one YAML file per protocol in the ``protocols`` package (a new protocol is a new file).

Schema (docs/architecture.md "Protocols")::

    name: base2novel              # registry key (defaults to the file stem)
    description: one line
    kind: base2novel              # how a unit is executed (vocabulary.Kind)
    recipe: base2novel            # the methods' recipe family (vocabulary.RecipeFamily)
    methods: [zsclip, coop]       # default methods
    seeds: [1, 2, 3]
    shots: [16]                   # null = the full training split
    suites:                       # per suite: {datasets: [...]} or, for transfer kinds, {source: X, targets: [...]}
      toy: {datasets: [toy_shapes]}
    metric: {name: hm, mode: max} # what a sweep optimises
    table: {layout: base2novel}   # vocabulary.Layout
    params: {}                    # kind-specific settings passed to execution (e.g. the long-tail imbalance)
    aliases: []

Files are read with ``yaml.safe_load`` and checked against :class:`ProtocolFile` (an OmegaConf structured config)
and :data:`dplbench.schema.PROTOCOL_RANGES`; dataset and method names are checked against the
registries when units are expanded (:func:`check_names` does it eagerly).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Optional

import yaml
from omegaconf import MISSING

from dplbench.errors import ConfigError
from dplbench.schema import PROTOCOL_RANGES, check_ranges, load_structured
from dplbench.vocabulary import Kind, Layout, MetricMode, RecipeFamily

log = logging.getLogger(__name__)


# -- file schema (OmegaConf structured config) --------------------------------------------------------------------
@dataclass
class SuiteSpec:
    datasets: Optional[list[str]] = None
    source: Optional[str] = None
    targets: Optional[list[str]] = None
    description: Optional[str] = None
    epoch_scale: Optional[float] = None


@dataclass
class MetricSpec:
    name: str = MISSING
    mode: MetricMode = MetricMode.max


@dataclass
class TableSpec:
    layout: Layout = MISSING


@dataclass
class ProtocolFile:
    name: Optional[str] = None            # null = the file stem
    description: str = ""
    kind: Kind = MISSING
    recipe: RecipeFamily = MISSING
    methods: list[str] = MISSING
    seeds: list[int] = MISSING
    shots: list[Optional[int]] = MISSING
    suites: dict[str, SuiteSpec] = MISSING
    metric: MetricSpec = MISSING
    table: TableSpec = MISSING
    params: dict[str, Any] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    kind: Kind
    recipe: RecipeFamily
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    shots: tuple[int | None, ...]
    suites: Mapping[str, Mapping[str, Any]]
    metric: Mapping[str, str]
    table: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    source_file: str = ""

    @property
    def is_transfer(self) -> bool:
        """Train on one source dataset, evaluate on every target (cross-dataset, domain generalisation)."""
        return self.kind == Kind.transfer

    def suite(self, name: str) -> Mapping[str, Any]:
        if name not in self.suites:
            raise ConfigError(f"protocol {self.name!r} has no suite {name!r}. Valid suites: "
                              f"{', '.join(sorted(self.suites))}")
        return self.suites[name]

    @property
    def dataset_order(self) -> tuple[str, ...]:
        """Every dataset the protocol names, in the order its suites list them (sources before their targets):
        the order of the rows and columns of its tables."""
        names: list[str] = []
        for spec in self.suites.values():
            names += [*([spec["source"]] if spec.get("source") else []), *(spec.get("targets") or []),
                      *(spec.get("datasets") or [])]
        return tuple(dict.fromkeys(names))

    def registered_methods(self) -> list[str]:
        """The default methods that are registered; the missing ones are dropped with a warning."""
        from dplbench.catalog import METHODS

        present = [m for m in self.methods if m in METHODS]
        missing = [m for m in self.methods if m not in METHODS]
        if missing:
            log.warning("protocol %s: default method(s) %s not registered; running %s", self.name,
                        ", ".join(missing), ", ".join(present) or "nothing")
        return present


def _suite(where: str, name: str, spec: SuiteSpec, transfer: bool) -> dict[str, Any]:
    """The suite as the rest of the code reads it; a transfer suite names a source and targets, others datasets."""
    at = f"{where}: suites.{name}"
    if transfer:
        if spec.source is None or spec.datasets is not None or not spec.targets:
            raise ConfigError(f"{at}: a transfer protocol names one 'source' dataset and a non-empty 'targets' list")
        suite: dict[str, Any] = {"source": spec.source, "targets": list(spec.targets)}
    else:
        if spec.source is not None or spec.targets is not None:
            raise ConfigError(f"{at}: only transfer protocols have 'source'/'targets'; use 'datasets'")
        if not spec.datasets:
            raise ConfigError(f"{at}.datasets must be a non-empty list of dataset names")
        suite = {"datasets": list(spec.datasets)}
    if spec.description is not None:
        suite["description"] = spec.description
    if spec.epoch_scale is not None:
        suite["epoch_scale"] = float(spec.epoch_scale)
    return suite


def protocol_from_mapping(data: Any, where: str, default_name: str = "") -> Protocol:
    """Validate a parsed YAML mapping; every problem raises ConfigError naming ``where`` and the key."""
    spec = load_structured(ProtocolFile, data, where)
    check_ranges([("methods", spec.methods), ("seeds", spec.seeds), ("shots", spec.shots), ("suites", spec.suites),
                  *((f"suites.{n}.epoch_scale", s.epoch_scale) for n, s in spec.suites.items())],
                 PROTOCOL_RANGES, where)
    name = spec.name or default_name
    if not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    transfer = spec.kind == Kind.transfer
    return Protocol(
        name=name, description=spec.description, kind=spec.kind, recipe=spec.recipe, methods=tuple(spec.methods),
        seeds=tuple(spec.seeds), shots=tuple(spec.shots),
        suites={str(n): _suite(where, str(n), s, transfer) for n, s in spec.suites.items()},
        metric={"name": spec.metric.name, "mode": spec.metric.mode}, table={"layout": spec.table.layout},
        params=dict(spec.params), aliases=tuple(spec.aliases), source_file=where)


def load_protocol_text(text: str, where: str, default_name: str = "") -> Protocol:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return protocol_from_mapping(data, where, default_name)


def protocol_files() -> list[Any]:
    """The ``*.yaml`` resources of the ``protocols`` package (sweep definitions live in ``sweeps/``)."""
    package = resources.files("dplbench.protocols")
    return sorted((p for p in package.iterdir() if p.name.endswith(".yaml") and p.is_file()),
                  key=lambda p: p.name)


def discover_protocols(registry: Any) -> None:
    """Add one registry entry per protocol file. Duplicate names are an error (two files, one key)."""
    seen: dict[str, str] = {}
    for path in protocol_files():
        stem = path.name[: -len(".yaml")]
        protocol = load_protocol_text(path.read_text(encoding="utf-8"), f"protocols/{path.name}", stem)
        if protocol.name in seen:
            raise ConfigError(f"protocols/{path.name}: protocol name {protocol.name!r} is also defined in "
                              f"{seen[protocol.name]}")
        seen[protocol.name] = f"protocols/{path.name}"
        registry.add(protocol.name, protocol, description=protocol.description, aliases=protocol.aliases)


def check_names(protocol: Protocol) -> None:
    """Every dataset and default method named by the protocol is registered (raises UnknownNameError)."""
    from dplbench.catalog import DATASETS, METHODS

    for spec in protocol.suites.values():
        for name in [spec.get("source"), *spec.get("datasets", []), *spec.get("targets", [])]:
            if name is not None:
                DATASETS.canonical(name)
    for name in protocol.methods:
        METHODS.canonical(name)
