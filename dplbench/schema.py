"""One schema mechanism for every user-written value, checked before anything starts.

Structure and types come from dataclasses read by OmegaConf (structured configs; closed vocabularies are the
enums of :mod:`dplbench.vocabulary`): :func:`load_structured` turns a parsed YAML mapping into a dataclass and
:func:`describe_omegaconf_error` turns OmegaConf's errors into one line naming the file and key. Value ranges that a
type cannot express live in one declarative table per source (:data:`CONFIG_RANGES`, :data:`PROTOCOL_RANGES`,
:data:`SWEEP_RANGES`), enforced by :func:`check_ranges`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from dplbench.errors import ConfigError, did_you_mean, unknown_choice_message
from dplbench.vocabulary import LogLevel, Precision, StatsMode, TableStyle

T = TypeVar("T")


# -- structure and types (OmegaConf) ------------------------------------------------------------------------------
def load_structured(schema: type[T], data: Any, where: str) -> T:
    """``data`` (a parsed YAML mapping) merged over ``schema``'s defaults, as a ``schema`` instance."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), dict(data)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {describe_omegaconf_error(exc)}") from None


def describe_omegaconf_error(exc: Exception, key: str | None = None) -> str:
    """One line for an OmegaConf error: unknown key (did you mean, valid keys), bad choice, wrong type, missing."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue

    full_key = key or str(getattr(exc, "full_key", "") or getattr(exc, "key", "") or "?")
    owner = getattr(exc, "object_type", None)
    name = str(getattr(exc, "key", full_key))
    fields = _field_types(owner)
    if isinstance(exc, ConfigKeyError) or (isinstance(exc, AttributeError) and fields):
        msg = f"unknown key {full_key!r}"
        hint = did_you_mean(name, fields)
        if hint:
            msg += f"; did you mean {hint!r}?"
        return msg + (f" Valid keys: {', '.join(fields)}" if fields else "")
    if isinstance(exc, MissingMandatoryValue):
        return f"missing required key {full_key!r}"
    vocabulary = fields.get(name)
    if isinstance(vocabulary, type) and issubclass(vocabulary, Enum):
        value = str(getattr(exc, "value", "?"))
        return f"invalid value for {full_key!r}: " + unknown_choice_message(
            full_key.rsplit(".", 1)[-1], value, [m.value for m in vocabulary])
    detail = str(getattr(exc, "msg", exc)).splitlines()[0]
    return f"invalid value for {full_key!r}: {detail}"


def _field_types(owner: Any) -> dict[str, Any]:
    """Field name -> type (Optional unwrapped) of a dataclass; {} for anything else."""
    if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
        return {}
    hints = typing.get_type_hints(owner)
    out = {}
    for f in dataclasses.fields(owner):
        kind = hints.get(f.name)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        out[f.name] = args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind
    return out


# -- value ranges (one table per source) --------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A value constraint: ``accepts(value)`` and the phrase that ends ``... must be <expected>``."""

    accepts: Callable[[Any], bool]
    expected: str


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def one_of(choices: Iterable[str], what: str) -> Check:
    choices = tuple(str(c) for c in choices)
    return Check(lambda v: v in choices, f"one of {', '.join(choices)} ({what})")


POSITIVE = Check(lambda v: _number(v) and v > 0, "a finite number > 0")
POSITIVE_INT = Check(lambda v: _int(v) and v > 0, "an integer > 0")
NON_NEGATIVE_INT = Check(lambda v: _int(v) and v >= 0, "an integer >= 0")
NON_NEGATIVE = Check(lambda v: _number(v) and v >= 0, "a number >= 0")
RATE = Check(lambda v: _number(v) and 0 <= v < 1, "a rate in [0, 1)")
PROBABILITY = Check(lambda v: _number(v) and 0 <= v <= 1, "a probability in [0, 1]")
NON_EMPTY = Check(lambda v: isinstance(v, (list, tuple, Mapping)) and len(v) > 0, "non-empty")
SHOT_COUNTS = Check(lambda v: isinstance(v, (list, tuple)) and all(s is None or (_int(s) and s > 0) for s in v),
                    "a list of integers > 0 (null = the full training split)")
CROP_SCALE = Check(lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x) and 0 < x <= 1 for x in v)
                   and v[0] <= v[1], "[low, high] with 0 < low <= high <= 1")
DEVICE = Check(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
               "auto, cpu, cuda, cuda:N or mps")
EXISTING_PATH = Check(lambda v: isinstance(v, str) and Path(v).expanduser().is_file(), "an existing file")

TABLE_FORMATS = ("md", "tex", "csv")

# Config keys (dotted paths; ``method.*`` are method options, checked whichever method declares them). A null value
# always means "the default" and is never checked. Keys marked in ``EXPLICIT_ONLY`` are only checked when the user
# gave them (an empty ``datasets`` left unset is filled from the protocol; ``datasets=[]`` given is an error).
CONFIG_RANGES: dict[str, tuple[Check, ...]] = {
    "methods": (NON_EMPTY,),
    "datasets": (NON_EMPTY,),
    "seeds": (NON_EMPTY,),
    "shots": (SHOT_COUNTS,),
    "train.epochs": (POSITIVE_INT,),
    "train.lr": (POSITIVE,),
    "train.batch_size": (POSITIVE_INT,),
    "train.eval_batch_size": (POSITIVE_INT,),
    "train.epoch_scale": (POSITIVE,),
    "train.feature_bank.views": (POSITIVE_INT,),
    "train.feature_bank.seed": (NON_NEGATIVE_INT,),
    "data.crop_scale": (CROP_SCALE,),
    "backbone.precision": (one_of(Precision.values(), "backbone precision"),),
    "backbone.checkpoint": (EXISTING_PATH,),
    "run.device": (DEVICE,),
    "run.log_level": (one_of(LogLevel.values(), "console log level of Ray, Tune and MLflow"),),
    "ray.num_cpus": (POSITIVE_INT,),
    "ray.cpus_per_trial": (POSITIVE,),
    "ray.gpus_per_trial": (NON_NEGATIVE,),
    "ray.max_concurrent": (POSITIVE_INT,),
    "sweep.num_samples": (POSITIVE_INT,),
    "report.stats": (one_of(StatsMode.values(), "table statistics"),),
    "report.n_boot": (POSITIVE_INT,),
    "report.style": (one_of(TableStyle.values(), "table style"),),
    "report.decimals": (Check(lambda v: _int(v) and 0 <= v <= 6, "an integer in [0, 6]"),),
    "report.std": (Check(lambda v: isinstance(v, bool), "true or false"),),
    "report.formats": (NON_EMPTY, Check(lambda v: isinstance(v, (list, tuple)) and set(v) <= set(TABLE_FORMATS),
                                        f"a list of {', '.join(TABLE_FORMATS)}")),
    "method.dropout_rate": (RATE,),
    "method.iwtd.p_max": (PROBABILITY,),
    "method.iwtd.p_min": (PROBABILITY,),
    "method.iwtd.p_const": (PROBABILITY,),
}
EXPLICIT_ONLY = frozenset({"methods", "datasets", "seeds"})

# Protocol files (``protocols/*.yaml``); ``*`` matches one suite name.
PROTOCOL_RANGES: dict[str, tuple[Check, ...]] = {
    "methods": (NON_EMPTY,),
    "seeds": (NON_EMPTY,),
    "shots": (NON_EMPTY, SHOT_COUNTS),
    "suites": (NON_EMPTY,),
    "suites.*.epoch_scale": (POSITIVE,),
}

# Sweep definitions (``protocols/sweeps/*.yaml``).
SWEEP_RANGES: dict[str, tuple[Check, ...]] = {
    "params": (NON_EMPTY,),
    "num_samples": (POSITIVE_INT,),
}


def checks_for(key: str, table: Mapping[str, tuple[Check, ...]]) -> tuple[Check, ...]:
    if key in table:
        return table[key]
    return next((checks for pattern, checks in table.items() if "*" in pattern and fnmatch.fnmatchcase(key, pattern)),
                ())


def check_value(key: str, value: Any, table: Mapping[str, tuple[Check, ...]], where: str = "") -> None:
    """Raise ConfigError (one line naming ``key``) when ``value`` breaks a check of ``key`` in ``table``."""
    if value is None:
        return
    for check in checks_for(key, table):
        if not check.accepts(value):
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}{key}={value!r}: must be {check.expected}")


def check_ranges(values: Iterable[tuple[str, Any]], table: Mapping[str, tuple[Check, ...]], where: str = "") -> None:
    """Check every (dotted key, value) pair that ``table`` constrains."""
    for key, value in values:
        check_value(key, value, table, where)
