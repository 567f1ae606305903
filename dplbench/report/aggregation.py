"""Every aggregation rule of the published tables, keyed by table layout (docs/protocols.md §6).

Input: verified result records (``dplbench.results.read_result``). Output of :func:`aggregate`: a tidy DataFrame,
one row per (variant, block, dataset, shots, metric), already in display order, with the seed mean, the sample
std (ddof=1), the seeds used and their values, and what is missing or failed. Rules:

- per cell: arithmetic mean over seeds (optionally of per-seed values rounded like the reference evaluator);
- base-to-novel HM: HM of the seed means of Base and Novel (its std is the std of the per-seed HMs);
- base-to-novel Average: mean of the per-dataset means of Base and Novel, and HM of those two averages;
- transfer Average: mean over the targets, source excluded; few-shot Average: mean over datasets per shot count;
- an Average's per-seed values exist only for seeds present in every member cell (its std uses those);
- a seed that is expected (``config["seeds"]``) but has no result, or whose unit failed, leaves the cell
  incomplete with a note naming the unit; nothing is averaged away silently.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dplbench.vocabulary import Layout

from dplbench.errors import DplbenchError
from dplbench.report.layouts import layout_spec
from dplbench.report.reference import DATASET_ORDER, METHOD_ORDER, dataset_display, harmonic_mean, method_display

AVERAGE = "Average"
COLUMNS = ("protocol", "layout", "variant", "method", "overrides", "source", "dataset", "shots", "metric", "role",
           "rule", "mean", "std", "n_seeds", "expected_seeds", "seeds", "values", "missing_seeds", "failed_seeds",
           "n_datasets", "expected_datasets", "complete", "notes")


@dataclass(frozen=True)
class Variant:
    """One table row identity: a method with its option overrides (and shot count where it varies)."""

    method: str
    overrides: str          # canonical JSON of the overrides ("{}" when none)
    shots: int | None       # set only when a non-few-shot table mixes shot counts

    @property
    def label(self) -> str:
        label = method_display(self.method)
        extra = json.loads(self.overrides)
        if extra:
            label += " (" + ", ".join(f"{short_key(k)}={format_value(v)}" for k, v in extra.items()) + ")"
        if self.shots is not None:
            label += f" [{self.shots}-shot]"
        return label


def short_key(key: str) -> str:
    """An override key as rows and columns show it (``method.n_ctx`` -> ``n_ctx``)."""
    return key[len("method."):] if key.startswith("method.") else key


def format_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _overrides_order(overrides: str) -> tuple:
    """Sort key of a variant's overrides: by key, then numbers by value (0.05 before 0.1), other values as text."""
    def value(v: Any) -> tuple:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return (0, float(v), "") if number else (1, 0.0, json.dumps(v, sort_keys=True))

    return tuple((k, value(v)) for k, v in sorted(json.loads(overrides).items()))


@dataclass
class _Obs:
    method: str
    overrides: str
    dataset: str
    shots: int | None
    seed: int
    done: bool
    metrics: Mapping[str, Any]
    error: str
    config: Mapping[str, Any]
    stamp: str              # finish time (or path) to pick the newest of duplicate files
    protocol: str

    @property
    def unit_name(self) -> str:
        shots = f"shots{self.shots}" if self.shots is not None else "full"
        return f"{self.method}/{self.dataset}/{shots}/seed{self.seed}"


def _observation(record: Mapping[str, Any]) -> _Obs:
    where = record.get("_path", "result record")
    unit = record.get("unit")
    if not isinstance(unit, Mapping) or any(k not in unit for k in ("method", "dataset", "seed")):
        raise DplbenchError(f"{where}: result record lacks unit.method / unit.dataset / unit.seed")
    overrides = unit.get("overrides") or {}
    timing = record.get("timing") or {}
    return _Obs(
        method=str(unit["method"]),
        overrides=json.dumps(dict(overrides), sort_keys=True, default=str),
        dataset=str(unit["dataset"]),
        shots=unit.get("shots"),
        seed=int(unit["seed"]),
        done=record.get("status") == "done",
        metrics=record.get("metrics") or {},
        error=str(record.get("error") or "unknown error"),
        config=record.get("config") or {},
        stamp=f"{timing.get('finished') or ''}|{record.get('_path', '')}",
        protocol=str(unit.get("protocol", "")),
    )


def _pick(observations: list[_Obs]) -> dict[int, _Obs]:
    """One observation per seed: a finished one over a failed one, then the newest."""
    chosen: dict[int, _Obs] = {}
    for obs in observations:
        old = chosen.get(obs.seed)
        if old is None or (obs.done, obs.stamp) > (old.done, old.stamp):
            chosen[obs.seed] = obs
    return chosen


def _merged_order(lists: Iterable[Sequence[Any]], seen: Iterable[Any], canonical: Sequence[Any]) -> list[Any]:
    """Order names: the configured lists (longest first), then a canonical order, then sorted."""
    order: list[Any] = []
    for lst in sorted((list(x) for x in lists if x), key=len, reverse=True):
        order += [x for x in lst if x not in order]
    seen = set(seen)
    order += [x for x in canonical if x in seen and x not in order]
    order += sorted((x for x in seen if x not in order), key=str)
    return order


def _protocol_dataset_order(protocols: Iterable[str]) -> tuple[str, ...]:
    """The order the records' protocols list their datasets in (their YAML files), then the papers' order: tables
    show datasets as the protocol lists them, never alphabetically (names no protocol lists come last, sorted)."""
    from dplbench.catalog import PROTOCOLS

    order: list[str] = []
    for name in sorted(protocols):
        if name in PROTOCOLS:
            order += PROTOCOLS.get(name).dataset_order
    return tuple(dict.fromkeys([*order, *DATASET_ORDER]))


def _config_list(config: Mapping[str, Any], key: str) -> list[Any]:
    value = config.get(key)
    return list(value) if isinstance(value, (list, tuple)) else []


@dataclass
class _Cell:
    """Per-seed values of one (variant, dataset, shots, metric) plus what is missing."""

    expected: tuple[int, ...]
    values: dict[int, float]
    failed: dict[int, str]
    missing: tuple[int, ...]
    notes: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.failed and all(s in self.values for s in self.expected)


def _stats(values: Sequence[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values) if values else math.nan
    std = statistics.stdev(values) if len(values) >= 2 else math.nan
    return mean, std


class _Builder:
    def __init__(self, records: Iterable[Mapping[str, Any]], layout: str, round_per_seed: int | None):
        self.spec = layout_spec(layout)
        self.layout = self.spec.name.value
        self.round_per_seed = round_per_seed
        self.obs = [_observation(r) for r in records]
        if not self.obs:
            raise DplbenchError(f"no result records to build a {self.layout} table from")
        self.protocol = ",".join(sorted({o.protocol for o in self.obs}))
        self.dataset_order = _protocol_dataset_order({o.protocol for o in self.obs})
        self.rows: list[dict[str, Any]] = []
        all_shots = {o.shots for o in self.obs}
        mixed_shots = not self.spec.by_shots and len(all_shots) > 1
        self.common_shots = next(iter(all_shots)) if len(all_shots) == 1 else None
        self.variant_of = {id(o): Variant(o.method, o.overrides, o.shots if mixed_shots else None) for o in self.obs}
        configs = [o.config for o in self.obs]
        methods = _merged_order((_config_list(c, "methods") for c in configs), {o.method for o in self.obs},
                                METHOD_ORDER)
        variants = set(self.variant_of.values())
        self.variants = sorted(variants, key=lambda v: (methods.index(v.method), v.overrides != "{}",
                                                        _overrides_order(v.overrides), v.shots or 0))
        self.all_seeds = sorted({s for c in configs for s in _config_list(c, "seeds")} | {o.seed for o in self.obs})

    # --- per-seed collection ------------------------------------------------------------------------------------
    def expected_seeds(self, group: list[_Obs], variant_obs: list[_Obs]) -> set[int]:
        for pool in (group, variant_obs):
            seeds = {s for o in pool for s in _config_list(o.config, "seeds")}
            if seeds:
                return seeds
        return set(self.all_seeds)

    def cell(self, variant: Variant, dataset: str, group: list[_Obs], variant_obs: list[_Obs], key: str,
             where: str) -> _Cell:
        chosen = _pick(group)
        expected = self.expected_seeds(group, variant_obs) | {s for s, o in chosen.items() if o.done}
        values: dict[int, float] = {}
        failed: dict[int, str] = {}
        notes: list[str] = []
        missing = tuple(s for s in sorted(expected) if s not in chosen)
        if missing:
            plural = "s" if len(missing) > 1 else ""
            notes.append(f"{where}: no result file for seed{plural} {', '.join(map(str, missing))}")
        for seed in sorted(expected):
            obs = chosen.get(seed)
            if obs is None:
                continue
            if not obs.done:
                failed[seed] = obs.error
                notes.append(f"{where}: unit {obs.unit_name} failed: {obs.error}")
            elif not isinstance(obs.metrics.get(key), (int, float)) or math.isnan(obs.metrics[key]):
                notes.append(f"{where}: unit {obs.unit_name} has no metric {key!r}")
            else:
                value = float(obs.metrics[key])
                values[seed] = round(value, self.round_per_seed) if self.round_per_seed is not None else value
        return _Cell(tuple(sorted(expected)), values, failed, missing, tuple(notes))

    # --- row emission -------------------------------------------------------------------------------------------
    def emit(self, variant: Variant, *, dataset: str, metric: str, role: str, rule: str, mean: float,
             per_seed: Mapping[int, float], expected: Sequence[int], complete: bool, notes: Sequence[str],
             failed: Mapping[int, str] | None = None, missing: Sequence[int] = (), source: str | None = None,
             shots: int | None = None, n_datasets: int | None = None, expected_datasets: int | None = None) -> None:
        seeds = sorted(per_seed)
        _, std = _stats([per_seed[s] for s in seeds])
        self.rows.append({
            "protocol": self.protocol, "layout": self.layout, "variant": variant.label, "method": variant.method,
            "overrides": variant.overrides, "source": source, "dataset": dataset,
            "shots": next((k for k in (shots, variant.shots, self.common_shots) if k is not None), None),
            "metric": metric, "role": role, "rule": rule,
            "mean": mean, "std": std, "n_seeds": len(seeds), "expected_seeds": len(expected),
            "seeds": tuple(seeds), "values": tuple(per_seed[s] for s in seeds),
            "missing_seeds": tuple(missing), "failed_seeds": tuple(sorted((failed or {}).items())),
            "n_datasets": n_datasets, "expected_datasets": expected_datasets,
            "complete": bool(complete and len(seeds) > 0), "notes": tuple(dict.fromkeys(notes)),
        })

    def emit_cell(self, variant: Variant, cell: _Cell, *, dataset: str, metric: str, role: str,
                  source: str | None = None, shots: int | None = None) -> None:
        mean, _ = _stats([cell.values[s] for s in sorted(cell.values)])
        self.emit(variant, dataset=dataset, metric=metric, role=role, rule="seed_mean", mean=mean,
                  per_seed=cell.values, expected=cell.expected, complete=cell.complete, notes=cell.notes,
                  failed=cell.failed, missing=cell.missing, source=source, shots=shots)

    def emit_average(self, variant: Variant, members: Mapping[str, _Cell], expected_members: Sequence[str], *,
                     metric: str, rule: str, source: str | None = None, shots: int | None = None) -> dict[int, float]:
        """Mean over member cells' means; returns the per-seed averages (seeds present in every member)."""
        means = [_stats(list(c.values.values()))[0] for c in members.values() if c.values]
        mean = math.fsum(means) / len(means) if means else math.nan
        per_seed = self._per_seed_average(members, expected_members)
        expected = sorted({s for c in members.values() for s in c.expected})
        have = [d for d in expected_members if d in members and members[d].values]
        complete = len(have) == len(expected_members) and all(members[d].complete for d in expected_members)
        notes = []
        lacking = [dataset_display(d) for d in expected_members if d not in have]
        where = f"{variant.label} / {AVERAGE}" + (f" ({shots}-shot)" if shots is not None else "")
        if lacking:
            notes.append(f"{where}: over {len(have)} of {len(expected_members)} datasets "
                         f"(no result for {', '.join(lacking)})")
        elif not complete:
            notes.append(f"{where}: averages cells with missing or failed seeds")
        self.emit(variant, dataset=AVERAGE, metric=metric, role="average", rule=rule, mean=mean, per_seed=per_seed,
                  expected=expected, complete=complete, notes=notes, source=source, shots=shots,
                  n_datasets=len(have), expected_datasets=len(expected_members))
        return per_seed

    @staticmethod
    def _per_seed_average(members: Mapping[str, _Cell], expected_members: Sequence[str]) -> dict[int, float]:
        cells = [members.get(d) for d in expected_members]
        if not cells or any(c is None or not c.values for c in cells):
            return {}
        common = set.intersection(*(set(c.values) for c in cells))
        return {s: math.fsum(c.values[s] for c in cells) / len(cells) for s in sorted(common)}

    # --- layouts ------------------------------------------------------------------------------------------------
    def by_variant(self) -> dict[Variant, list[_Obs]]:
        groups: dict[Variant, list[_Obs]] = {v: [] for v in self.variants}
        for o in self.obs:
            groups[self.variant_of[id(o)]].append(o)
        return groups

    def datasets(self) -> list[str]:
        return _merged_order((_config_list(o.config, "datasets") for o in self.obs), {o.dataset for o in self.obs},
                             self.dataset_order)

    def build(self) -> list[dict[str, Any]]:
        if self.spec.transfer:
            self.build_transfer()
        elif self.spec.by_shots:
            self.build_few_shot()
        else:
            self.build_per_dataset()
        return self.rows

    def build_per_dataset(self) -> None:
        """base2novel (Average block first, HM of means) and long_tail (no Average)."""
        metrics = self.spec.metrics
        datasets = self.datasets()
        b2n = self.spec.name is Layout.base2novel
        cells: dict[tuple[Variant, str, str], _Cell] = {}
        for variant, vobs in self.by_variant().items():
            for d in datasets:
                group = [o for o in vobs if o.dataset == d]
                where = f"{variant.label} / {dataset_display(d)}"
                for m in metrics:
                    if not (b2n and m == "hm"):
                        cells[variant, d, m] = self.cell(variant, d, group, vobs, m, where)
        if b2n:
            for variant in self.variants:
                per_seed = {m: self.emit_average(variant, {d: cells[variant, d, m] for d in datasets}, datasets,
                                                 metric=m, rule="mean_over_datasets") for m in ("base", "novel")}
                expected = sorted({s for d in datasets for s in cells[variant, d, "base"].expected})
                self._emit_hm(variant, AVERAGE, self.rows[-2:], per_seed, expected, "hm_of_averages")
        for d in datasets:
            for variant in self.variants:
                for m in metrics:
                    if b2n and m == "hm":
                        base, novel = cells[variant, d, "base"], cells[variant, d, "novel"]
                        per_seed = {"base": base.values, "novel": novel.values}
                        self._emit_hm(variant, d, self.rows[-2:], per_seed, base.expected, "hm_of_seed_means")
                    else:
                        self.emit_cell(variant, cells[variant, d, m], dataset=d, metric=m, role="dataset")

    def _emit_hm(self, variant: Variant, dataset: str, parts: list[dict[str, Any]],
                 per_seed: Mapping[str, Mapping[int, float]], expected: Sequence[int], rule: str) -> None:
        """HM row from the Base and Novel rows just emitted (``parts``): HM of their means, per-seed HMs."""
        base, novel = (p["mean"] for p in parts)
        hm = math.nan if math.isnan(base) or math.isnan(novel) else harmonic_mean(base, novel)
        seeds = sorted(set(per_seed["base"]) & set(per_seed["novel"]))
        hm_seed = {s: harmonic_mean(per_seed["base"][s], per_seed["novel"][s]) for s in seeds}
        failed = dict(p for part in parts for p in part["failed_seeds"])
        missing = sorted({s for part in parts for s in part["missing_seeds"]})
        self.emit(variant, dataset=dataset, metric="hm", role=parts[0]["role"], rule=rule, mean=hm, per_seed=hm_seed,
                  expected=expected, complete=all(p["complete"] for p in parts),
                  notes=[n for p in parts for n in p["notes"]], failed=failed, missing=missing,
                  n_datasets=parts[0]["n_datasets"], expected_datasets=parts[0]["expected_datasets"])

    def build_few_shot(self) -> None:
        datasets = self.datasets()
        shots = _merged_order((), {o.shots for o in self.obs} | {k for o in self.obs
                                                                  for k in _config_list(o.config, "shots")}, ())
        shots = sorted(s for s in shots if s is not None)
        cells: dict[tuple[Variant, str, int], _Cell] = {}
        for variant, vobs in self.by_variant().items():
            for d in datasets:
                for k in shots:
                    group = [o for o in vobs if o.dataset == d and o.shots == k]
                    where = f"{variant.label} / {dataset_display(d)} / {k}-shot"
                    cells[variant, d, k] = self.cell(variant, d, group, vobs, "acc", where)
        for variant in self.variants:
            for k in shots:
                self.emit_average(variant, {d: cells[variant, d, k] for d in datasets}, datasets, metric="acc",
                                  rule="mean_over_datasets", shots=k)
        for d in datasets:
            for variant in self.variants:
                for k in shots:
                    self.emit_cell(variant, cells[variant, d, k], dataset=d, metric="acc", role="dataset", shots=k)

    def build_transfer(self) -> None:
        for variant, vobs in self.by_variant().items():
            sources = _merged_order((), {o.config.get("source") or o.dataset for o in vobs}, self.dataset_order)
            for source in sources:
                group = [o for o in vobs if (o.config.get("source") or o.dataset) == source]
                targets = self._targets(source, group)
                where = f"{variant.label} / {dataset_display(source)}"
                src = self.cell(variant, source, group, vobs, f"acc/{source}", where)
                self.emit_cell(variant, src, dataset=source, metric="top1", role="source", source=source)
                members = {}
                for t in targets:
                    members[t] = self.cell(variant, t, group, vobs, f"acc/{t}", where)
                self.emit_average(variant, members, targets, metric="top1", rule="mean_over_targets", source=source)
                for t in targets:
                    self.emit_cell(variant, members[t], dataset=t, metric="top1", role="target", source=source)

    def _targets(self, source: str, group: list[_Obs]) -> list[str]:
        source_groups = [o for o in self.obs if (o.config.get("source") or o.dataset) == source]
        configured = [_config_list(o.config, "targets") for o in source_groups]
        seen = {k[len("acc/"):] for o in source_groups for k in o.metrics if k.startswith("acc/")}
        targets = _merged_order(configured, seen if not any(configured) else (), self.dataset_order)
        return [t for t in targets if t != source]


def aggregate(records: Iterable[Mapping[str, Any]], layout: str, *, round_per_seed: int | None = None):
    """Tidy DataFrame of every table cell (columns: :data:`COLUMNS`), in display order.

    ``layout``: base2novel | cross_dataset | domain_generalization | few_shot | long_tail (or a protocol kind such
    as long_tail_b2n). ``round_per_seed``: round each per-seed value first, like the reference evaluator (1).
    """
    import pandas as pd

    rows = _Builder(records, layout, round_per_seed).build()
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"shots": "Int64", "n_datasets": "Int64", "expected_datasets": "Int64"})
