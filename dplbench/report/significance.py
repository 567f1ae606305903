"""Intervals and significance marks for every table layout, rebuilt from the result files and their prediction
sidecars alone (the estimator is :mod:`dplbench.report.stats`; docs/statistics.md explains both).

:func:`table_statistics` maps the records of one table onto the bootstrap: rows are the table's variants, cells
are (block, column) pairs exactly as the table shows them (a dataset or transfer source, and a metric, target or
shot count), derived cells (HM, Average rows) are computed replicate by replicate from their parts. A (variant,
evaluated split) whose chosen seeds do not all have a readable sidecar is left out, so its cells (and averages
over them) get no interval, and a note says which unit lacks predictions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dplbench.errors import DplbenchError
from dplbench.predictions import CorruptPredictionsError, SplitPredictions
from dplbench.report.aggregation import AVERAGE, _Builder, _pick
from dplbench.report.layouts import layout_spec
from dplbench.report.stats import Bootstrap, BestComparison, Comparison, Interval, Metric, average, harmonic_mean
from dplbench.results import ResultStore
from dplbench.vocabulary import Layout

STAT_COLUMNS = ("ci_low", "ci_high", "ref", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm")
DEFAULT_BOOT = 2000
ALPHA = 0.05
LEVEL = 0.95
BUCKETS = ("many", "medium", "few")

Cell = tuple[str, Any]   # (block, column): dataset or source, and metric / target / shot count


def cell_of(row: Mapping[str, Any], layout: str) -> Cell:
    """The (block, column) cell of one aggregated-frame row (the keys tables use to place it)."""
    spec = layout_spec(layout)
    if spec.transfer:
        return row["source"], row["dataset"]
    if spec.by_shots:
        return row["dataset"], int(row["shots"])
    return row["dataset"], row["metric"]


@dataclass
class TableStatistics:
    """The bootstrap of one table (``boot`` is None when no cell has predictions) and what it could not cover."""

    layout: str
    boot: Bootstrap | None
    cells: list[Cell]                        # every cell of the bootstrap, derived ones included
    notes: list[str] = field(default_factory=list)
    n_boot: int = DEFAULT_BOOT
    level: float = LEVEL
    _intervals: dict[str, dict[Cell, Interval]] | None = None
    _best: dict[Cell, BestComparison | None] = field(default_factory=dict)

    @property
    def rows(self) -> list[str]:
        return [] if self.boot is None else list(self.boot.rows)

    def intervals(self) -> dict[str, dict[Cell, Interval]]:
        if self._intervals is None:
            self._intervals = {} if self.boot is None else self.boot.intervals()
        return self._intervals

    def interval(self, row: str, cell: Cell) -> Interval | None:
        found = self.intervals().get(row, {}).get(cell)
        return found if found is not None and math.isfinite(found.low) else None

    def best(self, cell: Cell) -> BestComparison | None:
        """Every row with an interval on ``cell`` against the best of them (Holm over those rows); None when fewer
        than two rows have one."""
        if cell not in self._best:
            rows = [r for r in self.rows if self.interval(r, cell) is not None]
            self._best[cell] = self.boot.compare_to_best(cell, rows=rows) if len(rows) >= 2 else None
        return self._best[cell]

    def compare(self, a: str, b: str) -> dict[Cell, Comparison]:
        if self.boot is None:
            return {}
        return {cell: c for cell, c in self.boot.compare(a, b).items() if math.isfinite(c.p_value)}

    def annotate(self, frame):
        """``frame`` (aggregated) with :data:`STAT_COLUMNS`: the cell's interval, and its comparison with the best
        row of its block and column (``ref``; the best row itself gets diff 0 and no p-value)."""
        frame = frame.copy()
        values: dict[str, list[Any]] = {c: [] for c in STAT_COLUMNS}
        for row in frame.to_dict("records"):
            cell = cell_of(row, self.layout)
            iv = self.interval(row["variant"], cell)
            best = self.best(cell) if iv is not None else None
            comp = best.comparisons.get(row["variant"]) if best is not None else None
            is_best = best is not None and best.best == row["variant"]
            out = {"ci_low": iv.low if iv else math.nan, "ci_high": iv.high if iv else math.nan,
                   "ref": best.best if best is not None else "",
                   "diff": 0.0 if is_best else (comp.difference if comp else math.nan),
                   "diff_ci_low": comp.low if comp else math.nan, "diff_ci_high": comp.high if comp else math.nan,
                   "p_value": comp.p_value if comp else math.nan,
                   "p_holm": comp.p_adjusted if comp and comp.p_adjusted is not None else math.nan}
            for key in STAT_COLUMNS:
                values[key].append(out[key])
        for key in STAT_COLUMNS:
            frame[key] = values[key]
        return frame

    def method_text(self) -> str:
        return f"paired two-way bootstrap over seeds and test items ({self.n_boot} replicates, docs/statistics.md)"


# -- records -> per-row, per-seed predictions -------------------------------------------------------------------
def _source(obs: Any) -> str:
    return str(obs.config.get("source") or obs.dataset)


def _entries(layout: Layout, obs: Any, sidecar: Mapping[str, SplitPredictions]) -> dict[str, SplitPredictions]:
    """The bootstrap splits one unit contributes: ``{split key: predictions}`` (key unique per table)."""
    if layout is Layout.base2novel:
        return {f"{obs.dataset}:{p}": sidecar[p] for p in ("base", "novel") if p in sidecar}
    if layout is Layout.few_shot:
        return {f"{obs.dataset}:{obs.shots}": sidecar["acc"]} if "acc" in sidecar else {}
    if layout is Layout.long_tail:
        return {f"{obs.dataset}:test": sidecar["test"]} if "test" in sidecar else {}
    return {f"{_source(obs)}>{name[len('acc/'):]}": p for name, p in sidecar.items() if name.startswith("acc/")}


def _collect(records: Sequence[Mapping[str, Any]], layout: str
             ) -> tuple[dict[str, dict[int, dict[str, SplitPredictions]]], dict[str, list[int]], list[str]]:
    """Per-variant, per-seed bootstrap splits of the units each table cell uses; the long-tail class buckets of each
    split; notes on what had to be left out."""
    builder = _Builder(records, layout, None)
    kind = builder.spec.name
    by_obs = {id(o): r for o, r in zip(builder.obs, records)}
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for obs in builder.obs:
        groups.setdefault((builder.variant_of[id(obs)], obs.dataset, obs.shots, _source(obs)), []).append(obs)
    predictions: dict[str, dict[int, dict[str, SplitPredictions]]] = {}
    buckets: dict[str, list[Any]] = {}
    lacking: dict[str, list[str]] = {}
    for (variant, *_), group in groups.items():
        chosen = [o for o in _pick(group).values() if o.done]
        per_seed: dict[int, dict[str, SplitPredictions]] = {}
        unusable: set[str] = set()
        for obs in chosen:
            record = by_obs[id(obs)]
            try:
                per_seed[obs.seed] = _entries(kind, obs, ResultStore.read_predictions(record))
            except CorruptPredictionsError as exc:
                lacking.setdefault(variant.label, []).append(f"{obs.unit_name}: {exc}")
                per_seed[obs.seed] = {}
            for key in per_seed[obs.seed]:
                buckets.setdefault(key, []).append((record.get("extra") or {}).get("class_buckets"))
        keys = {k for split in per_seed.values() for k in split}
        if kind is Layout.base2novel:
            keys |= {f"{o.dataset}:{p}" for o in chosen for p in ("base", "novel")}
        for key in keys:
            if any(key not in split for split in per_seed.values()):
                unusable.add(key)
        row = predictions.setdefault(variant.label, {})
        for seed, split in per_seed.items():
            kept = {k: v for k, v in split.items() if k not in unusable}
            if kept:
                row.setdefault(seed, {}).update(kept)
    classes = {key: found[0] for key, found in buckets.items()
               if found and found[0] is not None and all(f == found[0] for f in found)}
    total = sum(len(v) for v in lacking.values())
    if total and total == sum(1 for o in builder.obs if o.done):
        notes = ["no interval anywhere: no finished unit has a usable predictions file (results written before "
                 "per-item predictions were stored, or sidecars deleted)"]
    else:
        notes = [f"no interval where {label} lacks predictions: {len(why)} unit(s) without a usable predictions "
                 f"file (e.g. {why[0]})" for label, why in lacking.items()]
    return predictions, classes, notes


def _metrics(layout: Layout, splits: Iterable[str], targets: Mapping[str, np.ndarray],
             classes: Mapping[str, Mapping[str, list[int]]]) -> dict[Cell, Metric]:
    metrics: dict[Cell, Metric] = {}
    for key in splits:
        if layout is Layout.base2novel:
            dataset, part = key.rsplit(":", 1)
            metrics[dataset, part] = Metric(key)
        elif layout is Layout.few_shot:
            dataset, shots = key.rsplit(":", 1)
            metrics[dataset, int(shots)] = Metric(key)
        elif layout is Layout.long_tail:
            dataset = key.rsplit(":", 1)[0]
            metrics[dataset, "overall"] = Metric(key, per_class=True)
            for bucket, labels in (classes.get(key) or {}).items():
                mask = np.isin(targets[key], np.asarray(labels, dtype=np.int64))
                if bucket in BUCKETS and mask.any():
                    metrics[dataset, bucket] = Metric(key, mask=mask, per_class=True)
        else:
            source, target = key.split(">", 1)
            metrics[source, target] = Metric(key)
    return metrics


def _derived(layout: Layout, records: Sequence[Mapping[str, Any]], metrics: Mapping[Cell, Metric]):
    """The derived cells (HM, Average) whose parts all have a metric, as one derive function."""
    builder = _Builder(records, layout.value, None)
    datasets = builder.datasets()
    have = set(metrics)
    groups: dict[Cell, list[Cell]] = {}
    hms: list[str] = []
    if layout is Layout.base2novel:
        hms = [d for d in datasets if {(d, "base"), (d, "novel")} <= have]
        for part in ("base", "novel"):
            if all((d, part) in have for d in datasets):
                groups[AVERAGE, part] = [(d, part) for d in datasets]
    elif layout is Layout.few_shot:
        for shots in sorted({k for _, k in have}):
            if all((d, shots) in have for d in datasets):
                groups[AVERAGE, shots] = [(d, shots) for d in datasets]
    elif layout_spec(layout.value).transfer:
        for source in {s for s, _ in have}:
            obs = [o for o in builder.obs if _source(o) == source]
            targets = builder._targets(source, obs)
            if targets and all((source, t) in have for t in targets):
                groups[source, AVERAGE] = [(source, t) for t in targets]
    average_hm = (AVERAGE, "base") in groups and (AVERAGE, "novel") in groups

    def derive(values: Mapping[Cell, Any]) -> dict[Cell, Any]:
        out = {(d, "hm"): harmonic_mean(values[d, "base"], values[d, "novel"]) for d in hms}
        out.update({cell: average([values[p] for p in parts]) for cell, parts in groups.items()})
        if average_hm:
            out[AVERAGE, "hm"] = harmonic_mean(out[AVERAGE, "base"], out[AVERAGE, "novel"])
        return out

    return derive


def table_statistics(records: Iterable[Mapping[str, Any]], layout: str, *, n_boot: int = DEFAULT_BOOT,
                     seed: int = 0, level: float = LEVEL) -> TableStatistics:
    """The bootstrap of one table's records (see the module docstring); never raises for missing predictions."""
    records = [r for r in records]
    spec = layout_spec(layout)
    predictions, classes, notes = _collect(records, layout)
    predictions = {row: by_seed for row, by_seed in predictions.items() if by_seed}
    splits: dict[str, np.ndarray] = {}
    for by_seed in predictions.values():
        for split in by_seed.values():
            for key, p in split.items():
                if key not in splits:
                    splits[key] = p.aligned_to(np.sort(p.item_ids)).target
    metrics = _metrics(spec.name, splits, splits, classes)
    if not metrics:
        return TableStatistics(spec.name.value, None, [], notes or ["no prediction files: no intervals"], n_boot,
                               level)
    try:
        boot = Bootstrap(predictions, metrics, _derived(spec.name, records, metrics), n_boot=n_boot, seed=seed,
                         level=level)
    except ValueError as exc:
        return TableStatistics(spec.name.value, None, [], notes + [f"no intervals: {exc}"], n_boot, level)
    cells = list(next(iter(boot.intervals().values()), {})) if boot.rows else []
    return TableStatistics(spec.name.value, boot, cells, notes, n_boot, level)


def headline_cell(stats: TableStatistics) -> Cell | None:
    """The cell the layout's headline compares on: the Average row's headline metric (b2n HM; few-shot: the
    largest shot count; transfer: the first source's Average), else the first block's headline metric."""
    spec = layout_spec(stats.layout)
    cells = [c for c in stats.cells if any(stats.interval(r, c) for r in stats.rows)]
    if spec.transfer:
        wanted = [c for c in cells if c[1] == AVERAGE]
    elif spec.by_shots:
        wanted = sorted((c for c in cells if c[0] == AVERAGE), key=lambda c: c[1], reverse=True)
    else:
        wanted = [c for c in cells if c == (AVERAGE, spec.headline)] or [c for c in cells if c[1] == spec.headline]
    return wanted[0] if wanted else None


def lead_line(stats: TableStatistics, alpha: float = ALPHA, decimals: int = 2) -> str:
    """One line: is the top row's lead on the headline cell significant?"""
    cell = headline_cell(stats)
    best = stats.best(cell) if cell is not None else None
    if best is None:
        why = stats.notes[0] if stats.notes else "fewer than two rows with predictions"
        return f"Significance: not assessed ({why})."
    where = f"{cell[0]} {layout_spec(stats.layout).headline if cell[1] == AVERAGE else cell[1]}"
    runner_up = max(best.comparisons.items(), key=lambda kv: kv[1].difference)
    name, comp = runner_up
    lead = (f"{best.best} leads on {where}; vs {name}: {0.0 - comp.difference:+.{decimals}f} "
            f"[{0.0 - comp.high:+.{decimals}f}, {0.0 - comp.low:+.{decimals}f}], p = {comp.p_value:.3g} "
            f"(Holm {comp.p_adjusted:.3g})")
    tied = sorted(r for r in best.tied_with_best(alpha) if r != best.best)
    if not tied:
        return f"Significance: {lead}: the lead over every other row is significant ({stats.method_text()}, Holm over the other rows, alpha {alpha:g})."
    return (f"Significance: {lead}: the lead is NOT significant; not distinguishable from the top: "
            f"{', '.join(tied)} ({stats.method_text()}, Holm over the other rows, alpha {alpha:g}).")


def resolve_row(stats: TableStatistics, name: str, records: Sequence[Mapping[str, Any]]) -> str:
    """A row of the table by its label or by its method name (which must then name one row)."""
    rows = stats.rows
    if name in rows:
        return name
    builder = _Builder(records, stats.layout, None)
    labels = sorted({v.label for v in builder.variants if v.method == name or v.label.lower() == name.lower()})
    labels = [label for label in labels if label in rows] or labels
    if len(labels) == 1 and labels[0] in rows:
        return labels[0]
    if len(labels) > 1:
        raise DplbenchError(f"{name!r} names several rows ({'; '.join(labels)}); give one of them exactly")
    raise DplbenchError(f"no row {name!r} with predictions in this table; rows: {', '.join(rows) or '(none)'}")


def comparison_text(stats: TableStatistics, a: str, b: str, records: Sequence[Mapping[str, Any]], *,
                    protocol: str = "", decimals: int = 2) -> str:
    """``dplbench compare``: a - b on every cell of the table (paired on the seeds both have, same test items),
    with the interval, the p-value and Holm over the cells shown; the Average cells last."""
    from dplbench.report.reference import dataset_display
    from dplbench.report.tables import METRIC_HEADERS
    from dplbench.report.stats import holm

    row_a, row_b = resolve_row(stats, a, records), resolve_row(stats, b, records)
    if row_a == row_b:
        raise DplbenchError(f"a and b name the same row ({row_a!r})")
    comparisons = stats.compare(row_a, row_b)
    order = {cell: i for i, cell in enumerate(stats.cells)}
    cells = sorted(comparisons, key=lambda c: (c[0] == AVERAGE or c[1] == AVERAGE, order[c]))
    adjusted = dict(zip(cells, holm([comparisons[c].p_value for c in cells])))

    def name(part: Any) -> str:
        return f"{part}-shot" if isinstance(part, int) else METRIC_HEADERS.get(part, dataset_display(str(part)))

    header = ("Block", "Column", "a", "b", "a - b", f"{100 * stats.level:g} % interval", "p", "p (Holm)")
    values = stats.intervals()
    lines = [header]
    for cell in cells:
        c = comparisons[cell]
        va, vb = values[row_a][cell].value, values[row_b][cell].value
        lines.append((name(cell[0]), name(cell[1]), f"{va:.{decimals}f}", f"{vb:.{decimals}f}",
                      f"{c.difference + 0.0:+.{decimals}f}", f"[{c.low + 0.0:+.{decimals}f}, {c.high + 0.0:+.{decimals}f}]",
                      f"{c.p_value:.3g}", f"{adjusted[cell]:.3g}" + (" *" if adjusted[cell] < ALPHA else "")))
    if len(lines) == 1:
        return (f"{protocol}: no cell where both {row_a} and {row_b} have predictions"
                + (f" ({stats.notes[0]})" if stats.notes else ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))).rstrip()
             for line in lines]
    table.insert(1, "  ".join("-" * w for w in widths))
    out = [f"{protocol}: a = {row_a}, b = {row_b}", *table, "",
           f"a - b paired on the seeds both rows have and on the same test items; {stats.method_text()}; "
           f"Holm over the {len(cells)} cells above; * = significant at alpha {ALPHA:g}."]
    out += [f"Note: {n}" for n in stats.notes]
    return "\n".join(out)
