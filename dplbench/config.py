"""Structured configuration: dataclass defaults <- protocol YAML <- ``--config FILE`` <- ``key=value`` overrides.

Overrides use dotted paths (``method.n_ctx=8``, ``seeds=[1,2,3]``, ``run.device=cuda``) and are typed and validated
against the dataclasses below (OmegaConf struct mode). A few shorthands select names: ``method=coop`` (or a list)
sets ``methods``, ``dataset=x`` sets ``datasets``, ``seed=1`` sets ``seeds``, ``backbone=ViT-B-16`` sets
``backbone.name``. Every mistake raises :class:`~dplbench.errors.ConfigError` with one line (and a did-you-mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from dplbench.errors import ConfigError, did_you_mean
from dplbench.orchestrate.settings import RayConfig, SweepConfig, TrackingConfig
from dplbench.schema import CONFIG_RANGES, EXPLICIT_ONLY, check_ranges, check_value, describe_omegaconf_error
from dplbench.units import flatten


@dataclass
class BackboneConfig:
    name: str = "toy"                     # "toy" (built-in) or any open_clip model name
    pretrained: Optional[str] = None      # open_clip tag (e.g. "openai"); "random" = random init; null = catalog default
    checkpoint: Optional[str] = None      # local checkpoint path (overrides the tag)
    precision: str = "auto"               # a vocabulary.Precision name
    cache_dir: Optional[str] = None       # where pretrained weights are looked up (never downloaded)


@dataclass
class DataConfig:
    root: Optional[str] = None            # null -> $DPLBENCH_DATA -> ~/data
    num_workers: int = 0
    crop_scale: Optional[list[float]] = None  # training RandomResizedCrop scale; null = the dataset's default
    paths: dict[str, str] = field(default_factory=dict)  # dataset name -> its folder (overrides root/<folder>)


@dataclass
class FeatureBankConfig:
    """Opt-in feature bank for methods with a frozen image tower (docs/methods.md §4.8): the frozen features of
    ``views`` augmented views per training image are computed once, and every step samples one stored view."""

    views: Optional[int] = None           # K views per image; null = off (a fresh random augmentation every step)
    seed: int = 0                         # view seed: which K views (shared across train seeds and methods)


@dataclass
class TrainConfig:
    epochs: Optional[int] = None          # null = the method's recipe for the protocol
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    epoch_scale: Optional[float] = None   # multiply the recipe's epochs (null = the suite's, e.g. toy few_shot 0.25)
    eval_batch_size: int = 100
    deterministic: bool = False
    split_seed: Optional[int] = None      # which few-shot subset (null = the run seed)
    train_seed: Optional[int] = None      # training randomness (null = the run seed)
    feature_bank: FeatureBankConfig = field(default_factory=FeatureBankConfig)


@dataclass
class RunConfig:
    device: str = "auto"                  # auto | cpu | cuda | cuda:N | mps
    output_dir: str = "results"
    force: bool = False                   # recompute finished units
    log_level: str = "warning"            # what Ray, Tune and MLflow print on the console (--verbose: info)
    command: list[str] = field(default_factory=list)  # the user's command line (set by the CLI; recorded in results)


@dataclass
class ReportConfig:
    stats: str = "marks"                  # a vocabulary.StatsMode: marks | ci | none (shorthand stats=ci)
    n_boot: int = 2000                    # bootstrap replicates of the intervals and tests (docs/statistics.md)
    style: str = "default"                # a vocabulary.TableStyle: default | paper (means only, display names)
    decimals: int = 2                     # digits after the point in md/tex/terminal tables
    std: Optional[bool] = None            # show ± std (null = the style's choice: default yes, paper no)
    formats: list[str] = field(default_factory=lambda: ["md", "tex", "csv"])  # table files written
    variants: bool = False                # also units run with overrides (sweeps, method.*, train.*) when the
    #                                       selection names none of those keys (docs: "Sweeps and variants")
    a: Optional[str] = None               # `dplbench compare`: the two rows (method name or row label), a - b
    b: Optional[str] = None


@dataclass
class LLMConfig:
    path: Optional[str] = None            # local LLM checkpoint folder (methods built on an LLM; never downloaded)
    questions: Optional[str] = None       # JSON/YAML file: dataset -> 11 knowledge questions (None = dplbench's own)


@dataclass
class Config:
    protocol: str = "base2novel"
    methods: list[str] = field(default_factory=list)     # empty = the protocol's default list
    suite: str = "toy"                                    # toy | standard
    datasets: list[str] = field(default_factory=list)    # empty = the suite's datasets
    source: Optional[str] = None                          # transfer protocols: source dataset
    targets: list[str] = field(default_factory=list)     # transfer protocols: target datasets
    seeds: list[int] = field(default_factory=list)
    shots: list[Optional[int]] = field(default_factory=list)
    method: dict[str, Any] = field(default_factory=dict)  # option overrides for the selected methods
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)


# shorthand key -> (real key, wrap the value in a list)
SHORTHANDS = {"method": ("methods", True), "dataset": ("datasets", True), "seed": ("seeds", True),
              "backbone": ("backbone.name", False), "stats": ("report.stats", False), "a": ("report.a", False),
              "b": ("report.b", False)}


def parse_overrides(tokens: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[1,2]"]`` -> ``[("a.b", 1), ("c", [1, 2])]`` with OmegaConf's typing of values."""
    pairs: list[tuple[str, Any]] = []
    for token in tokens:
        key, sep, _ = token.partition("=")
        if not sep or not key or key.strip() != key:
            raise ConfigError(f"cannot parse override {token!r}: expected key=value (e.g. method.n_ctx=8)")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([token]), resolve=True)
        except (OmegaConfBaseException, yaml.YAMLError) as exc:  # e.g. seeds=[1, (an unclosed list)
            raise ConfigError(f"cannot parse override {token!r}: {exc.__class__.__name__}") from None
        value: Any = parsed
        for part in key.split("."):
            value = value[part]
        pairs.append((key, value))
    return pairs


def _apply_shorthand(key: str, value: Any) -> tuple[str, Any]:
    if key in SHORTHANDS:
        real, as_list = SHORTHANDS[key]
        if as_list and not isinstance(value, list):
            value = [value]
        return real, value
    return key, value


def _valid_keys(node: DictConfig, parts: list[str]) -> tuple[str, list[str]]:
    """The deepest existing prefix of ``parts`` and the keys valid at the next level."""
    current: Any = node
    prefix: list[str] = []
    for part in parts:
        if isinstance(current, DictConfig) and part in current:
            current = current[part]
            prefix.append(part)
        else:
            break
    keys = list(current.keys()) if isinstance(current, DictConfig) else []
    return ".".join(prefix), [str(k) for k in keys]


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] == "method":  # free-form: validated later against the selected methods' options
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        return
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except (ConfigKeyError, AttributeError, KeyError):
        prefix, keys = _valid_keys(cfg, parts)
        bad = parts[len(prefix.split(".")) if prefix else 0]
        hint = did_you_mean(bad, keys)
        where = f" in {prefix!r}" if prefix else ""
        msg = f"unknown config key {key!r}{where}"
        if hint:
            msg += f"; did you mean {hint!r}?"
        raise ConfigError(msg + f" Valid keys: {', '.join(sorted(keys))}") from None
    except ValidationError as exc:
        raise ConfigError(describe_omegaconf_error(exc, key).rstrip(".") + _list_hint(cfg, key, value)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid override {key}={value!r}: {str(exc).splitlines()[0]}") from None


def _list_hint(cfg: DictConfig, key: str, value: Any) -> str:
    """``seeds=1,2`` arrives as the string "1,2": suggest the list syntax."""
    if isinstance(value, list) or not isinstance(OmegaConf.select(cfg, key), ListConfig):
        return ""
    items = str(value).replace(" ", "")
    return f" (a list is written {key}=[{items}])"


def load_config_file(path: str | Path) -> list[tuple[str, Any]]:
    """A YAML file of config values, returned as dotted (key, value) pairs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.__class__.__name__} (expected UTF-8 YAML)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return [pair for k, v in data.items() for pair in
            ([(k, v)] if k == "method" and not isinstance(v, dict) else list(flatten(v, k).items()))]


def user_settings(overrides: list[str] | None = None,
                  config_file: str | Path | None = None) -> list[tuple[str, Any]]:
    """The (dotted key, value) pairs the user gave, config file first, shorthands resolved (``method=coop`` ->
    ``methods``); a shorthand given twice in one source is an error."""
    file_pairs = load_config_file(config_file) if config_file else []
    cli_pairs = parse_overrides(list(overrides or []))
    reject_conflicting_shorthands(file_pairs)
    reject_conflicting_shorthands(cli_pairs)
    return [_apply_shorthand(k, v) for k, v in file_pairs + cli_pairs]


def build_config(overrides: list[str] | None = None, config_file: str | Path | None = None,
                 *, validate_methods: bool = True) -> DictConfig:
    """Resolve the full configuration: defaults, protocol, config file, then command-line overrides."""
    pairs = user_settings(overrides, config_file)
    cfg = OmegaConf.structured(Config)
    for key, value in pairs:
        _set(cfg, key, value)
    explicit = {k for k, _ in pairs}
    fill_protocol_defaults(cfg, explicit=explicit)
    check_config_ranges(cfg, explicit)
    validate_names(cfg, validate_methods=validate_methods)
    absolutize_paths(cfg)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def explicit_keys(overrides: list[str] | None = None, config_file: str | Path | None = None) -> set[str]:
    """The dotted keys the user set (shorthands resolved): what a report selects."""
    return {key for key, _ in user_settings(overrides, config_file)}


def reject_conflicting_shorthands(pairs: list[tuple[str, Any]]) -> None:
    """``method=coop methods=[kgcoop]`` or ``seed=1 seed=2`` in one source is ambiguous: an error, not last-wins.

    (A config file and the command line are separate sources: the command line overrides the file.)"""
    given: dict[str, tuple[str, Any]] = {}
    for key, value in pairs:
        real = SHORTHANDS[key][0] if key in SHORTHANDS else key
        if real in given and (key in SHORTHANDS or given[real][0] in SHORTHANDS):
            first_key, first_value = given[real]
            raise ConfigError(f"conflicting values for {real!r}: {first_key}={first_value!r} and {key}={value!r}; "
                              f"give {real!r} once")
        given[real] = (key, value)


def check_config_ranges(cfg: DictConfig, explicit: set[str]) -> None:
    """Every value constrained by :data:`~dplbench.schema.CONFIG_RANGES` (keys in ``EXPLICIT_ONLY`` only when the
    user gave them: an empty list left unset means "the protocol's")."""
    for key in CONFIG_RANGES:
        if key.startswith("method.") or (key in EXPLICIT_ONLY and key not in explicit):
            continue
        value = OmegaConf.select(cfg, key)
        check_value(key, OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value,
                    CONFIG_RANGES)
    check_ranges(flatten(OmegaConf.to_container(cfg.method, resolve=True), "method").items(), CONFIG_RANGES)


def absolutize_paths(cfg: DictConfig) -> None:
    """Make every path absolute now: Ray trials run in another working directory."""
    for section, key in (("run", "output_dir"), ("data", "root"), ("backbone", "checkpoint"),
                         ("backbone", "cache_dir"), ("llm", "path"), ("llm", "questions")):
        value = cfg[section][key]
        if value:
            cfg[section][key] = str(Path(value).expanduser().absolute())
    for name, value in cfg.data.paths.items():
        cfg.data.paths[name] = str(Path(value).expanduser().absolute())


def fill_protocol_defaults(cfg: DictConfig, explicit: set[str]) -> None:
    """Fill methods / seeds / shots / datasets / source / targets from the protocol unless given."""
    from dplbench.catalog import PROTOCOLS

    protocol = PROTOCOLS.get(PROTOCOLS.canonical(cfg.protocol))
    cfg.protocol = protocol.name
    suites = protocol.suites
    if cfg.suite not in suites:
        raise ConfigError(f"protocol {protocol.name!r} has no suite {cfg.suite!r}. Valid suites: "
                          f"{', '.join(sorted(suites))}")
    suite = suites[cfg.suite]
    defaults = {"methods": protocol.registered_methods(), "seeds": list(protocol.seeds), "shots": list(protocol.shots),
                "datasets": list(suite.get("datasets", [])), "source": suite.get("source"),
                "targets": list(suite.get("targets", []))}
    for key, value in defaults.items():
        if key not in explicit and not cfg[key]:
            cfg[key] = value
    if "train.epoch_scale" not in explicit and cfg.train.epoch_scale is None:
        cfg.train.epoch_scale = suite.get("epoch_scale")


def validate_names(cfg: DictConfig, *, validate_methods: bool = True) -> None:
    """Every named method / dataset / backbone exists; method options exist in the selected methods."""
    from dplbench.catalog import BACKBONES, DATASETS, METHODS

    cfg.methods = [METHODS.canonical(m) for m in cfg.methods]
    for key in ("datasets", "targets"):
        cfg[key] = [DATASETS.canonical(d) for d in cfg[key]]
    if cfg.source is not None:
        cfg.source = DATASETS.canonical(cfg.source)
    cfg.data.paths = {DATASETS.canonical(name): path for name, path in cfg.data.paths.items()}
    if cfg.backbone.name not in BACKBONES:
        _validate_open_clip_name(cfg.backbone.name, BACKBONES.list())
    if validate_methods and cfg.method:
        validate_method_options(list(cfg.methods), OmegaConf.to_container(cfg.method, resolve=True))
    if validate_methods:
        check_method_recipes(cfg)


def _validate_open_clip_name(name: str, registered: list[str]) -> None:
    import open_clip  # only reached for names outside the registry

    choices = set(open_clip.list_models()) | set(registered)
    if name not in choices:
        hint = did_you_mean(name, choices)
        msg = f"unknown backbone {name!r}"
        if hint:
            msg += f"; did you mean {hint!r}?"
        raise ConfigError(msg + " Valid choices: " + ", ".join(sorted(registered)) +
                          " or any open_clip model (`dplbench ls backbones`)")


def validate_method_options(methods: list[str], options: dict[str, Any]) -> None:
    """Each ``method.<key>`` must exist (with a compatible type) in at least one selected method's options."""
    from dplbench.catalog import METHODS

    flat = flatten(options).items()
    schemas = {}
    for name in methods:
        adapter = METHODS.get(name)
        schema = getattr(adapter, "Options", None)
        if schema is not None:
            schemas[name] = OmegaConf.structured(schema)
    for key, value in flat:
        errors = []
        accepted = False
        for name, schema in schemas.items():
            probe = schema.copy()
            try:
                OmegaConf.update(probe, key, value, merge=True)
                accepted = True
            except (ConfigKeyError, AttributeError, KeyError):
                continue
            except (ValidationError, OmegaConfBaseException) as exc:
                errors.append(f"{name}: {str(exc).splitlines()[0]}")
        if accepted:
            continue
        if errors:
            raise ConfigError(f"invalid value for method.{key}={value!r} ({errors[0]})")
        valid = sorted({k for s in schemas.values() for k in flatten(OmegaConf.to_container(s))})
        hint = did_you_mean(key, valid)
        msg = f"unknown method option 'method.{key}' for methods {', '.join(methods)}"
        if hint:
            msg += f"; did you mean 'method.{hint}'?"
        raise ConfigError(msg + f" Valid options: {', '.join(valid) if valid else '(none)'}")


def check_method_recipes(cfg: DictConfig) -> None:
    """Build each selected method's options as its units will (the recipe defaults of the protocol's family for
    every training dataset and shot count, then the user's ``method.*`` values), so that combinations an Options
    dataclass rejects (e.g. CoOp's ``class_specific`` with a ``ctx_init``) fail here, before Ray or MLflow start."""
    from dplbench.catalog import METHODS, PROTOCOLS
    from dplbench.engine.recipes import build_options
    from dplbench.units import options_for

    family = str(PROTOCOLS.get(cfg.protocol).recipe)
    user = OmegaConf.to_container(cfg.method, resolve=True) if cfg.method else {}
    datasets = list(cfg.datasets) or ([cfg.source] if cfg.source else [])
    shots = list(cfg.shots) or [None]
    for method in dict.fromkeys(cfg.methods):
        adapter = METHODS.get(method)
        own = options_for(method, user)
        seen: set[str] = set()
        for dataset in datasets:
            for k in shots:
                values = {**adapter.recipe(family, dataset, k).options, **own}
                if repr(values) in seen:
                    continue
                seen.add(repr(values))
                try:
                    build_options(adapter.Options, values, method)
                except ConfigError as exc:
                    raise ConfigError(str(exc) if repr(method) in str(exc) else f"method {method!r}: {exc}") from None


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
