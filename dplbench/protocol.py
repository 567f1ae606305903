"""Protocol definitions: one YAML file per protocol in the ``protocols`` package (a new protocol is a new file).

Schema (docs/architecture.md "Protocols")::

    name: base2novel              # registry key (defaults to the file stem)
    description: one line
    kind: base2novel              # how a unit is executed, see KINDS
    recipe: base2novel            # the methods' recipe family, see RECIPES
    methods: [zsclip, coop]       # default methods
    seeds: [1, 2, 3]
    shots: [16]                   # null = the full training split
    suites:                       # per suite: {datasets: [...]} or, for transfer kinds, {source: X, targets: [...]}
      toy: {datasets: [toy_shapes]}
    metric: {name: hm, mode: max} # what a sweep optimises
    table: {layout: base2novel}
    params: {}                    # kind-specific settings passed to execution (e.g. the long-tail imbalance)
    aliases: []

Files are read with ``yaml.safe_load`` and validated here; dataset and method names are checked against the
registries when units are expanded (:func:`check_names` does it eagerly).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from dplbench.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

KINDS = ("base2novel", "transfer", "few_shot", "long_tail_lift", "long_tail_b2n")
TRANSFER_KINDS = ("transfer",)
RECIPES = ("base2novel", "cross_dataset", "few_shot", "long_tail")
LAYOUTS = ("base2novel", "cross_dataset", "domain_generalization", "few_shot", "long_tail")
MODES = ("max", "min")
SUITE_KEYS = {"datasets", "source", "targets", "description", "epoch_scale"}
KEYS = ("name", "description", "kind", "recipe", "methods", "seeds", "shots", "suites", "metric", "table",
        "params", "aliases")
REQUIRED = ("kind", "recipe", "methods", "seeds", "shots", "suites", "metric", "table")


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    kind: str
    recipe: str
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
        return self.kind in TRANSFER_KINDS

    def suite(self, name: str) -> Mapping[str, Any]:
        if name not in self.suites:
            raise ConfigError(f"protocol {self.name!r} has no suite {name!r}. Valid suites: "
                              f"{', '.join(sorted(self.suites))}")
        return self.suites[name]

    def registered_methods(self) -> list[str]:
        """The default methods that are registered; the missing ones are dropped with a warning."""
        from dplbench.catalog import METHODS

        present = [m for m in self.methods if m in METHODS]
        missing = [m for m in self.methods if m not in METHODS]
        if missing:
            log.warning("protocol %s: default method(s) %s not registered; running %s", self.name,
                        ", ".join(missing), ", ".join(present) or "nothing")
        return present


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _str_list(where: str, key: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, f"{key!r} must be a list of names, got {value!r}")
    if not value and not allow_empty:
        raise _fail(where, f"{key!r} must not be empty")
    return tuple(value)


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(where, f"{key} {value!r} is not one of {', '.join(choices)}")
    return value


def _suites(where: str, kind: str, value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not value:
        raise _fail(where, "'suites' must map suite names (toy, standard) to {datasets: [...]}")
    suites: dict[str, dict[str, Any]] = {}
    for name, spec in value.items():
        at = f"{where}: suite {name!r}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{at} must be a mapping")
        unknown = sorted(set(spec) - SUITE_KEYS)
        if unknown:
            raise ConfigError(f"{at} has unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(SUITE_KEYS))}")
        if kind in TRANSFER_KINDS:
            if not isinstance(spec.get("source"), str) or "datasets" in spec:
                raise ConfigError(f"{at}: a transfer protocol names one 'source' dataset and a 'targets' list")
            suites[str(name)] = {"source": spec["source"],
                                 "targets": list(_str_list(at, "targets", spec.get("targets")))}
        else:
            if "source" in spec or "targets" in spec:
                raise ConfigError(f"{at}: only transfer protocols have 'source'/'targets'; use 'datasets'")
            suites[str(name)] = {"datasets": list(_str_list(at, "datasets", spec.get("datasets")))}
        if "description" in spec:
            suites[str(name)]["description"] = str(spec["description"])
        if spec.get("epoch_scale") is not None:
            scale = spec["epoch_scale"]
            if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
                raise ConfigError(f"{at}: 'epoch_scale' must be a positive number, got {scale!r}")
            suites[str(name)]["epoch_scale"] = float(scale)
    return suites


def protocol_from_mapping(data: Any, where: str, default_name: str = "") -> Protocol:
    """Validate a parsed YAML mapping; every problem raises ConfigError naming ``where``."""
    if not isinstance(data, dict):
        raise _fail(where, "a protocol file must hold a mapping")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        hint = did_you_mean(str(unknown[0]), KEYS)
        raise _fail(where, f"unknown key {unknown[0]!r}" + (f"; did you mean {hint!r}?" if hint else "")
                    + f" Valid keys: {', '.join(KEYS)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise _fail(where, f"missing required key(s) {', '.join(missing)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise _fail(where, "'name' must be a non-empty string")
    kind = _choice(where, "kind", data["kind"], KINDS)
    recipe = _choice(where, "recipe", data["recipe"], RECIPES)
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise _fail(where, f"'seeds' must be a non-empty list of integers, got {seeds!r}")
    shots = data["shots"]
    if not isinstance(shots, list) or not shots or not all(
            s is None or (isinstance(s, int) and not isinstance(s, bool) and s > 0) for s in shots):
        raise _fail(where, f"'shots' must be a non-empty list of positive integers or null, got {shots!r}")
    metric = data["metric"]
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise _fail(where, "'metric' must be {name: <metric key>, mode: max|min}")
    mode = _choice(where, "metric mode", metric.get("mode", "max"), MODES)
    table = data["table"]
    if not isinstance(table, dict):
        raise _fail(where, "'table' must be {layout: ...}")
    _choice(where, "table layout", table.get("layout"), LAYOUTS)
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise _fail(where, "'params' must be a mapping")
    return Protocol(
        name=name, description=str(data.get("description", "")), kind=kind, recipe=recipe,
        methods=_str_list(where, "methods", data["methods"]), seeds=tuple(seeds), shots=tuple(shots),
        suites=_suites(where, kind, data["suites"]), metric={"name": metric["name"], "mode": mode},
        table=dict(table), params=dict(params),
        aliases=_str_list(where, "aliases", data.get("aliases") or [], allow_empty=True), source_file=where)


def load_protocol_text(text: str, where: str, default_name: str = "") -> Protocol:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(where, f"not valid YAML ({str(exc).splitlines()[0]})") from None
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
