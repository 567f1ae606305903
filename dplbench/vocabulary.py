"""The closed vocabularies of dplbench, each defined once.

Protocol YAML, sweep YAML and the typed configs use these enums (OmegaConf converts the YAML strings), and the
execution, aggregation and table code key their record tables on them. A member's value is the string that users
write, so ``Kind("few_shot")`` and ``Kind.few_shot`` are the same thing.
"""

from __future__ import annotations

from enum import Enum


class _Vocabulary(str, Enum):
    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

    def __str__(self) -> str:
        return self.value


class Kind(_Vocabulary):
    """How a unit is executed (one runner per kind in :mod:`dplbench.execute`)."""

    base2novel = "base2novel"
    transfer = "transfer"
    few_shot = "few_shot"
    long_tail_lift = "long_tail_lift"
    long_tail_b2n = "long_tail_b2n"


class RecipeFamily(_Vocabulary):
    """Which of a method's published recipes a protocol uses."""

    base2novel = "base2novel"
    cross_dataset = "cross_dataset"
    few_shot = "few_shot"
    long_tail = "long_tail"


class Layout(_Vocabulary):
    """How a protocol's results are aggregated and laid out as tables and plots."""

    base2novel = "base2novel"
    cross_dataset = "cross_dataset"
    domain_generalization = "domain_generalization"
    few_shot = "few_shot"
    long_tail = "long_tail"


class MetricMode(_Vocabulary):
    max = "max"
    min = "min"


class SearchKind(_Vocabulary):
    grid = "grid"
    optuna = "optuna"


class Precision(_Vocabulary):
    auto = "auto"
    fp32 = "fp32"
    amp_bf16 = "amp_bf16"
    amp_fp16 = "amp_fp16"
    fp16_faithful = "fp16_faithful"


class Sampler(_Vocabulary):
    tpe = "tpe"
    random = "random"


class TableStyle(_Vocabulary):
    """How much a table shows: everything, or the papers' compact form."""

    default = "default"  # mean ± std, seed counts, every dataset name as registered (toy) or as published
    paper = "paper"      # means only, readable names for every dataset (toy ones too), ready to paste


class StatsMode(_Vocabulary):
    """What tables show of the statistics (docs/statistics.md); the CSV always has every statistics column."""

    marks = "marks"     # significance marks (rows not distinguishable from the best) and the test in a footnote
    ci = "ci"           # marks and the 95 % interval after every value
    none = "none"       # neither


class LogLevel(_Vocabulary):
    """What Ray, Ray Tune and MLflow may print on the console (``run.log_level``; dplbench's own lines always show)."""

    debug = "debug"
    info = "info"         # everything they log (``--verbose``)
    warning = "warning"   # the default: their warnings and errors only
    error = "error"
