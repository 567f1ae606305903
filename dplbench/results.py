"""Result store: one JSON file per unit of work, written atomically, verified by a checksum on read.

Layout: ``<workspace runs>/<protocol>/<method>/<dataset>/shots<K>_seed<S>_<hash8>.json``, and next to it the unit's
per-item prediction sidecar ``...<hash8>.predictions.npz`` (:mod:`dplbench.predictions`), referenced from the
record as ``record["predictions"] = {"file", "sha256", "bytes"}``. A record without a usable sidecar is still a
valid result (statistics then leave its cells without an interval).
Tables and plots are rebuilt from these files alone; MLflow only mirrors them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dplbench.fileio import atomic_write_text
from dplbench.workspace import Workspace

RESULT_FORMAT = "dplbench-result/1"
REQUIRED_KEYS = ("format", "status", "unit", "config_hash", "metrics")
STATUSES = ("done", "failed")

log = logging.getLogger(__name__)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a (JSON-serialisable) configuration mapping."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def _checksum(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def unit_relpath(protocol: str, method: str, dataset: str, shots: int | None, seed: int, chash: str) -> Path:
    """A unit's result file, relative to the workspace's runs folder."""
    shot_part = f"shots{shots}" if shots is not None else "full"
    return Path(protocol) / method / dataset / f"{shot_part}_seed{seed}_{chash[:8]}.json"


class CorruptResultError(ValueError):
    """A result file that is truncated, not JSON, or whose checksum does not match."""


def read_result(path: str | Path) -> dict[str, Any]:
    """Load and verify one result file; raise CorruptResultError when it cannot be trusted."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptResultError(f"{path}: unreadable result file ({exc.__class__.__name__})") from exc
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED_KEYS):
        raise CorruptResultError(f"{path}: missing required keys {REQUIRED_KEYS}")
    if record.get("format") != RESULT_FORMAT or record.get("status") not in STATUSES:
        raise CorruptResultError(f"{path}: unknown format or status")
    if record.get("checksum") != _checksum(record):
        raise CorruptResultError(f"{path}: checksum mismatch (partial or edited file)")
    problem = _type_problem(record)
    if problem:
        raise CorruptResultError(f"{path}: {problem}")
    record["_path"] = str(path)  # where it was read from: its sidecar lies next to it
    return record


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_problem(record: Mapping[str, Any]) -> str | None:
    """What a checksummed record written by another tool or version gets wrong, or None (a valid checksum says the
    file is whole, not that its fields have the types tables and plots rely on)."""
    unit = record["unit"]
    if not isinstance(unit, dict):
        return "unit is not a mapping"
    for key in ("protocol", "method", "dataset"):
        if key in unit and not isinstance(unit[key], str):
            return f"unit.{key} is {unit[key]!r}, not a name"
    if not _is_int(unit.get("seed")):
        return f"unit.seed is {unit.get('seed')!r}, not an integer"
    if unit.get("shots") is not None and not _is_int(unit["shots"]):
        return f"unit.shots is {unit['shots']!r}, not an integer or null"
    if not isinstance(unit.get("overrides", {}), dict):
        return "unit.overrides is not a mapping"
    if not isinstance(record["config_hash"], str):
        return "config_hash is not a string"
    metrics = record["metrics"]
    if not isinstance(metrics, dict):
        return "metrics is not a mapping"
    bad = [k for k, v in metrics.items() if v is not None and not _is_number(v)]
    if bad:
        return f"metrics.{bad[0]} is {metrics[bad[0]]!r}, not a number"
    for key, kind in (("config", dict), ("timing", dict), ("history", list)):
        if key in record and not isinstance(record[key], kind):
            return f"{key} is not a {'mapping' if kind is dict else 'list'}"
    return None


class ResultStore:
    """All result files of a workspace (its runs folder)."""

    def __init__(self, output_dir: str | Path):
        self.workspace = Workspace.at(output_dir)
        self.root = self.workspace.runs

    def path_for(self, unit: Mapping[str, Any], chash: str) -> Path:
        return self.root / unit_relpath(unit["protocol"], unit["method"], unit["dataset"], unit.get("shots"),
                                        unit["seed"], chash)

    @staticmethod
    def predictions_path(result_path: str | Path) -> Path:
        """Where the prediction sidecar of the result file ``result_path`` lives (the only place that says so)."""
        result_path = Path(result_path)
        return result_path.with_name(result_path.stem + ".predictions.npz")

    def write_predictions(self, unit: Mapping[str, Any], chash: str, splits: Mapping[str, Any]) -> dict[str, Any]:
        """Write a unit's sidecar atomically; returns the reference to store as ``record["predictions"]``."""
        from dplbench.predictions import write_predictions

        return write_predictions(self.predictions_path(self.path_for(unit, chash)), splits)

    @classmethod
    def read_predictions(cls, record: Mapping[str, Any]) -> dict[str, Any]:
        """The verified sidecar of a record read by :func:`read_result` / :meth:`iter_records` (``_path`` set);
        raises :class:`~dplbench.predictions.CorruptPredictionsError` when the record references none or the file
        is missing, altered or malformed."""
        from dplbench.predictions import CorruptPredictionsError, read_predictions

        ref = record.get("predictions")
        where = record.get("_path", "result record")
        if not isinstance(ref, Mapping) or not isinstance(ref.get("file"), str) or not ref.get("sha256"):
            raise CorruptPredictionsError(f"{where}: no predictions file recorded")
        path = Path(where).with_name(Path(ref["file"]).name)
        if path != cls.predictions_path(where):
            raise CorruptPredictionsError(f"{where}: predictions file {ref['file']!r} is not this result's sidecar")
        return read_predictions(path, str(ref["sha256"]))

    def write(self, record: Mapping[str, Any]) -> Path:
        """Validate, checksum and atomically write a result record; returns its path."""
        record = dict(record)
        record.setdefault("format", RESULT_FORMAT)
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"result record lacks {missing}")
        if record["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {record['status']!r}")
        record.pop("checksum", None)
        record["checksum"] = _checksum(record)
        path = self.path_for(record["unit"], record["config_hash"])
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
        return path

    def load(self, unit: Mapping[str, Any], chash: str) -> dict[str, Any] | None:
        """The verified record of a unit, or None when absent or corrupt (corrupt = not done)."""
        path = self.path_for(unit, chash)
        if not path.exists():
            return None
        try:
            return read_result(path)
        except CorruptResultError as exc:
            log.warning("ignoring %s", exc)
            return None

    def is_done(self, unit: Mapping[str, Any], chash: str) -> bool:
        record = self.load(unit, chash)
        return record is not None and record["status"] == "done" and record.get("config_hash") == chash

    def iter_records(self, protocol: str | None = None) -> Iterator[dict[str, Any]]:
        """Every verified record (optionally of one protocol); corrupt files are skipped with a warning."""
        base = self.root / (protocol or "")
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*.json")):
            try:
                record = read_result(path)
            except CorruptResultError as exc:
                log.warning("ignoring %s", exc)
                continue
            yield record
