"""Published numbers (results/reference/reference_numbers.csv) and the arithmetic checks they must pass.

The CSV is tidy: one published (or derived) value per row, keyed by protocol, method, dataset and metric, with the
display names used in the papers (``CoOp``, ``OxfordPets``). This module also owns the mapping from dplbench
registry names (``coop``, ``oxford_pets``) to those display names, which the tables use for their labels.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from dplbench.errors import DplbenchError

log = logging.getLogger(__name__)

COLUMNS = ("protocol", "method", "dataset", "metric", "value", "source", "verified")
VERIFIED_VALUES = ("yes", "no", "derived")
DEFAULT_TOLERANCE = 0.01
REFERENCE_PACKAGE = "dplbench.reference"  # results/reference/ of the repository, installed as package data
REFERENCE_FILE = "reference_numbers.csv"


def default_reference_path() -> Path:
    """The shipped reference CSV, wherever dplbench is installed (never looked up in the current folder)."""
    from importlib import resources

    return Path(str(resources.files(REFERENCE_PACKAGE) / REFERENCE_FILE))


# dplbench registry name -> name used in the papers (and in reference_numbers.csv).
DATASET_NAMES = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNetV2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
    "imagenet_lt": "ImageNet-LT",
    "places_lt": "Places-LT",
}
METHOD_NAMES = {
    "zsclip": "CLIP",
    "coop": "CoOp",
    "cocoop": "CoCoOp",
    "kgcoop": "KgCoOp",
    "maple": "MaPLe",
    "ivlp": "IVLP",
    "promptsrc": "PromptSRC",
    "drople": "DroPLe",
    "drople_llamp": "DroPLe-LLaMP",
}
NOT_COMPARABLE_NOTES = {
    "drople": ("the generic `drople` (Dropout Prompt on an IVLP backbone) is not the DroPLe paper's LLaMP-based "
               "model, so no published DroPLe row or difference is shown; compare it with IVLP and PromptSRC "
               "(use `drople_llamp` to reproduce the paper)"),
}
# Registry name -> reference method whose published numbers it reproduces. The generic ``drople`` (IVLP backbone)
# is deliberately absent: it is not the paper's method, and a difference against DroPLe's numbers means nothing.
COMPARABLE_METHODS = {name: "DroPLe" if name == "drople_llamp" else paper
                      for name, paper in METHOD_NAMES.items() if name not in NOT_COMPARABLE_NOTES}
# Every published base-to-novel, cross-dataset and domain-generalisation number is a 16-shot result.
PUBLISHED_SHOTS = 16
# Canonical order of methods in tables when the configuration does not give one.
METHOD_ORDER = ("zsclip", "coop", "cocoop", "kgcoop", "maple", "ivlp", "promptsrc", "drople", "drople_llamp")
DATASET_ORDER = tuple(dict.fromkeys(DATASET_NAMES))
B2N_DATASETS = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft",
                "SUN397", "DTD", "EuroSAT", "UCF101")
# Which rows form each protocol's Average (the source, ImageNet, is excluded in the transfer protocols).
AVERAGE_MEMBERS = {
    "base2novel": B2N_DATASETS,
    "cross_dataset": B2N_DATASETS[1:],
    "domain_generalization": ("ImageNetV2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R"),
}


def dataset_display(name: str) -> str:
    """Paper name of a registry dataset name; unknown names (toy datasets) are returned unchanged."""
    return DATASET_NAMES.get(name, name)


def method_display(name: str) -> str:
    """Paper name of a registry method name; unknown names are returned unchanged."""
    return METHOD_NAMES.get(name, name)


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2BN / (B + N); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


class ReferenceError(DplbenchError):
    """A reference-numbers file that is missing, malformed, or whose verified rows fail the arithmetic checks."""


@dataclass(frozen=True)
class ReferenceRow:
    protocol: str
    method: str
    dataset: str
    metric: str
    value: float
    source: str
    verified: str


@dataclass(frozen=True)
class CheckProblem:
    """One row (or group of rows) that does not satisfy an aggregation rule."""

    protocol: str
    method: str
    dataset: str
    rule: str
    published: float
    recomputed: float
    verified: bool

    def __str__(self) -> str:
        tag = "verified" if self.verified else "unverified"
        return (f"{self.protocol}/{self.method}/{self.dataset}: {self.rule} gives {self.recomputed:.3f}, "
                f"published {self.published:.2f} ({tag})")


class ReferenceNumbers:
    """The published numbers, indexed by (protocol, method, dataset, metric)."""

    def __init__(self, rows: list[ReferenceRow], path: Path | None = None):
        self.rows = rows
        self.path = path
        self._index = {(r.protocol, r.method, r.dataset, r.metric): r for r in rows}

    def get(self, protocol: str, method: str, dataset: str, metric: str) -> ReferenceRow | None:
        return self._index.get((protocol, method, dataset, metric))

    def protocols(self) -> set[str]:
        return {r.protocol for r in self.rows}

    def sources(self) -> list[str]:
        return sorted({r.source for r in self.rows})

    def lookup(self, protocol: str, method: str, dataset: str, metric: str) -> ReferenceRow | None:
        """Published value for registry names (``coop``, ``oxford_pets``, or ``Average``); None if not comparable."""
        ref_method = COMPARABLE_METHODS.get(method)
        if ref_method is None:
            return None
        ref_dataset = dataset if dataset == "Average" else DATASET_NAMES.get(dataset)
        if ref_dataset is None:
            return None
        return self.get(protocol, ref_method, ref_dataset, metric)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([r.__dict__ for r in self.rows], columns=list(COLUMNS))

    def check(self, tolerance: float = DEFAULT_TOLERANCE) -> list[CheckProblem]:
        """Every arithmetic rule of docs/protocols.md §6 that the rows can be checked against."""
        problems: list[CheckProblem] = []
        groups: dict[tuple[str, str], dict[tuple[str, str], ReferenceRow]] = {}
        for r in self.rows:
            groups.setdefault((r.protocol, r.method), {})[(r.dataset, r.metric)] = r
        for (protocol, method), cells in sorted(groups.items()):
            for dataset in sorted({d for d, _ in cells}):
                b, n, h = (cells.get((dataset, m)) for m in ("base", "novel", "hm"))
                if b and n and h:
                    hm = harmonic_mean(b.value, n.value)
                    if abs(hm - h.value) > tolerance:
                        problems.append(CheckProblem(protocol, method, dataset, "HM(base, novel)", h.value, hm,
                                                     _all_verified(b, n, h)))
            members = AVERAGE_MEMBERS.get(protocol, ())
            for metric in sorted({m for _, m in cells}):
                avg = cells.get(("Average", metric))
                if avg is None or (protocol == "base2novel" and metric == "hm"):
                    continue  # the b2n Average HM is HM(avg B, avg N), checked above
                rows = [cells.get((d, metric)) for d in members]
                if members and all(rows):
                    mean = math.fsum(r.value for r in rows) / len(rows)
                    if abs(mean - avg.value) > tolerance:
                        problems.append(CheckProblem(protocol, method, "Average", f"mean of {len(rows)} {metric} rows",
                                                     avg.value, mean, _all_verified(avg, *rows)))
        return problems


def _all_verified(*rows: ReferenceRow) -> bool:
    return all(r.verified == "yes" for r in rows)


def load_reference(path: str | Path | None = None, *, check: bool = True,
                   tolerance: float = DEFAULT_TOLERANCE) -> ReferenceNumbers:
    """Read and validate a reference CSV (default: the repository's results/reference/reference_numbers.csv).

    With ``check`` the rows are tested against the aggregation rules: a failing verified row raises
    ReferenceError; a failing unverified/derived row is logged.
    """
    path = Path(path) if path is not None else default_reference_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReferenceError(f"cannot read reference numbers {path} ({exc.__class__.__name__})") from exc
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ReferenceError(f"{path}: expected columns {','.join(COLUMNS)}, got {','.join(reader.fieldnames or [])}")
    rows = []
    seen = set()
    for lineno, raw in enumerate(reader, start=2):
        try:
            value = float(raw["value"])
        except (TypeError, ValueError):
            raise ReferenceError(f"{path}:{lineno}: value {raw['value']!r} is not a number") from None
        if raw["verified"] not in VERIFIED_VALUES:
            raise ReferenceError(f"{path}:{lineno}: verified must be one of {', '.join(VERIFIED_VALUES)}, "
                                 f"got {raw['verified']!r}")
        row = ReferenceRow(raw["protocol"], raw["method"], raw["dataset"], raw["metric"], value, raw["source"],
                           raw["verified"])
        key = (row.protocol, row.method, row.dataset, row.metric)
        if key in seen:
            raise ReferenceError(f"{path}:{lineno}: duplicate row for {'/'.join(key)}")
        seen.add(key)
        rows.append(row)
    ref = ReferenceNumbers(rows, path)
    if check:
        problems = ref.check(tolerance)
        bad = [p for p in problems if p.verified]
        if bad:
            raise ReferenceError(f"{path}: verified row fails the aggregation rules: {bad[0]}")
        for p in problems:
            log.warning("reference numbers: %s", p)
    return ref
