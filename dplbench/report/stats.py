"""Uncertainty of table cells and paired comparisons between rows, from per-item predictions (numpy only).

The estimator (docs/statistics.md has the reasoning and the references): a two-way bootstrap over the two sources
of variance of a benchmark number, training seeds and test items. Each replicate draws the seeds with replacement
(one draw for the whole table, so every row, dataset and split gets the same seed multiset) and, for every split,
the test items with replacement (one draw per split, shared by every row and every seed, because all seeds and
methods are evaluated on the same test items). A cell's replicate is the mean over the drawn seeds of the per-seed
metric on the drawn items; derived cells (HM, averages over datasets) are computed from the replicates of their
parts, replicate by replicate. Intervals are percentile intervals; a paired comparison is the replicate-wise
difference of two rows (same seeds, same items) and its two-sided p-value is the one the percentile interval
inverts, so "interval excludes 0" and "p < 1 - level" always agree.

Typical use (base-to-novel)::

    metrics = {(d, part): Metric(f"{d}:{part}") for d in datasets for part in ("base", "novel")}
    boot = Bootstrap(predictions, metrics, derive=harmonic_and_average(datasets), n_boot=2000, seed=0)
    boot.intervals()["coop"][("Average", "hm")]        # -> Interval(value, low, high)
    boot.compare_to_best(("Average", "hm"))             # -> BestComparison (Holm-adjusted p per row)

``predictions[row][seed][split]`` is a :class:`dplbench.predictions.SplitPredictions` (``read_predictions`` of the
row's unit for that seed). Values are in percent, like the tables.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from dplbench.predictions import SplitPredictions

Row = Hashable
Cell = Hashable
Derive = Callable[[Mapping[Cell, np.ndarray]], Mapping[Cell, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Metric:
    """How one cell's per-seed value comes from one split's predictions.

    ``mask``: which items count (boolean per item, in increasing item-id order; e.g. a long-tail bucket), all when
    None. ``per_class``: the mean of per-class accuracies over the classes with counted items (the long-tail
    buckets' rule) instead of the pooled (micro) accuracy."""

    split: str
    mask: np.ndarray | None = None
    per_class: bool = False


@dataclass(frozen=True)
class Interval:
    value: float        # point estimate: the table's rule (mean over seeds; HM/averages of those means)
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """Row A minus row B on one cell, over their common seeds."""

    difference: float
    low: float
    high: float
    p_value: float
    p_adjusted: float | None = None     # Holm-adjusted within the family it was tested in


@dataclass(frozen=True)
class BestComparison:
    """Every row against the best row of one cell; ``comparisons[row]`` is row minus best (Holm over the rows)."""

    cell: Cell
    best: Row
    comparisons: dict[Row, Comparison] = field(default_factory=dict)

    def tied_with_best(self, alpha: float = 0.05) -> set[Row]:
        """Rows not significantly different from the best (Holm-adjusted p >= alpha), the best included."""
        return {self.best} | {row for row, c in self.comparisons.items() if c.p_adjusted >= alpha}


# -- small vectorised helpers ---------------------------------------------------------------------------------
def harmonic_mean(base: np.ndarray | float, novel: np.ndarray | float) -> np.ndarray:
    """Element-wise HM = 2BN / (B + N) (0 where both are 0); works on replicate arrays and on scalars."""
    base, novel = np.asarray(base, dtype=float), np.asarray(novel, dtype=float)
    total = base + novel
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total == 0, 0.0, 2.0 * base * novel / np.where(total == 0, 1.0, total))


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaNs stay NaN and do not count)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Equal-tailed percentile interval of the finite replicates (nan, nan when there are none)."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from replicate differences: twice the smaller share of replicates on
    either side of 0 (ties count on both sides), with the usual +1 so it is never 0. It is the smallest
    1 - level at which the equal-tailed percentile interval excludes 0."""
    finite = differences[np.isfinite(differences)]
    if finite.size == 0:
        return float("nan")
    tail = min(np.count_nonzero(finite <= 0), np.count_nonzero(finite >= 0))
    return float(min(1.0, 2.0 * (tail + 1) / (finite.size + 1)))


def average(values: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise mean of several replicate arrays (or scalars)."""
    return np.mean(np.stack([np.asarray(v, dtype=float) for v in values]), axis=0)


# -- ready-made derived cells for the table layouts -----------------------------------------------------------
def averages(groups: Mapping[Cell, Sequence[Cell]]) -> Derive:
    """Derived cells that are plain means of other cells, e.g. ``{("Average", "top1"): [(t, "top1") for t in
    targets]}`` (transfer), one Average per shot count (few-shot), per bucket (long-tail)."""
    groups = {out: list(parts) for out, parts in groups.items()}

    def derive(values: Mapping[Cell, np.ndarray]) -> dict[Cell, np.ndarray]:
        return {out: average([values[p] for p in parts]) for out, parts in groups.items()}

    return derive


def harmonic_and_average(datasets: Sequence[Hashable], *, base: str = "base", novel: str = "novel",
                         hm: str = "hm", average_row: Hashable = "Average") -> Derive:
    """Base-to-novel: ``(d, hm)`` = HM of ``(d, base)`` and ``(d, novel)`` for every dataset, and the Average:
    mean of the datasets' Base and Novel, then HM of those two means (never a mean of per-dataset HMs)."""
    datasets = list(datasets)

    def derive(values: Mapping[Cell, np.ndarray]) -> dict[Cell, np.ndarray]:
        out = {(d, hm): harmonic_mean(values[(d, base)], values[(d, novel)]) for d in datasets}
        mean_base = average([values[(d, base)] for d in datasets])
        mean_novel = average([values[(d, novel)] for d in datasets])
        out.update({(average_row, base): mean_base, (average_row, novel): mean_novel,
                    (average_row, hm): harmonic_mean(mean_base, mean_novel)})
        return out

    return derive


def chain(*derives: Derive) -> Derive:
    """Apply several derive functions in turn; each sees the cells the previous ones added."""

    def derive(values: Mapping[Cell, np.ndarray]) -> dict[Cell, np.ndarray]:
        values = dict(values)
        added: dict[Cell, np.ndarray] = {}
        for step in derives:
            new = step(values)
            values.update(new)
            added.update(new)
        return added

    return derive


# -- the bootstrap ---------------------------------------------------------------------------------------------
def _stream(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per (seed, name): adding a split never changes another split's draws."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) multiplicities of n draws with replacement from n things."""
    if n == 0:
        return np.zeros((n_boot, 0), dtype=np.float32)
    picks = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float32)


class _Replicates(NamedTuple):
    """Replicates of every cell, three ways: seeds and items resampled (``both``), only seeds (``seeds``), only
    items (``items``). The two one-way sets measure the variance components :func:`variance_corrected` needs."""

    both: dict[Cell, np.ndarray]
    seeds: dict[Cell, np.ndarray]
    items: dict[Cell, np.ndarray]


def _seed_mean(per_seed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) weighted means over seeds of (B, S) per-seed values; NaN values (seed unavailable) get no weight."""
    weights = np.where(np.isfinite(per_seed), weights, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(weights > 0, per_seed, 0.0) * weights).sum(1) / weights.sum(1)


def variance_corrected(point: float, both: np.ndarray, seeds: np.ndarray, items: np.ndarray, n_seeds: int,
                       level: float = 0.95) -> np.ndarray:
    """Replicates of the two-way bootstrap rescaled about ``point`` (docs/statistics.md, "Variance correction").

    Resampling seeds and items together counts the seed-by-item residual twice, and any bootstrap over S seeds
    sees the seed component times (S-1)/S. The one-way replicate sets (seeds only, items only) and their
    interaction give the crossed design's variance ``v = v_items + max(S/(S-1) * v_seeds - v_residual, 0)``; the
    replicates are scaled to it, then widened by t_df / z at ``level`` with Welch-Satterthwaite degrees of freedom
    (the seed part is estimated from S - 1 degrees of freedom). One seed: the seed terms are 0 (the interval then
    covers test-item sampling only)."""
    ok = np.isfinite(both) & np.isfinite(seeds) & np.isfinite(items)
    if not np.isfinite(point) or ok.sum() < 2:
        return np.full_like(both, np.nan)
    v_both, v_items = float(np.var(both[ok])), float(np.var(items[ok]))
    target, df = v_items, math.inf
    if n_seeds > 1:
        factor = n_seeds / (n_seeds - 1)
        v_seeds = factor * float(np.var(seeds[ok]))
        v_resid = factor * float(np.var(both[ok] - seeds[ok] - items[ok] + point))
        target = v_items + max(v_seeds - v_resid, 0.0)
        if v_seeds > 0:
            df = max(1.0, target ** 2 * (n_seeds - 1) / v_seeds ** 2)
    if v_both <= 0 or target <= 0:
        return np.full_like(both, point)
    upper = 1.0 - (1.0 - level) / 2.0
    widen = _t_quantile(upper, round(df, 2)) / _t_quantile(upper, math.inf)
    return point + math.sqrt(target / v_both) * widen * (both - point)


@functools.lru_cache(maxsize=4096)
def _t_quantile(prob: float, df: float) -> float:
    """Upper quantile (prob > 0.5) of Student's t with ``df`` degrees of freedom (normal when df is inf), by
    integrating the density on a fine grid; ``df`` is rounded to 0.01 for caching by the caller's float."""
    x = np.linspace(0.0, 80.0, 400_001)
    if math.isinf(df) or df > 1e5:
        density = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    else:
        log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        density = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(x))])
    return float(np.interp(prob, cdf, x))


@dataclass
class _SplitData:
    item_ids: np.ndarray            # increasing
    target: np.ndarray
    weights: np.ndarray             # (B, n) item multiplicities of every replicate


class Bootstrap:
    """Bootstrap replicates of every cell of one table (see the module docstring for the estimator).

    ``predictions[row][seed][split]``: SplitPredictions; a (row, seed) without a split leaves that seed out of
    the row's cells on that split. Every row and seed must have predicted the same items on a split.
    ``metrics[cell]``: how each cell is computed; ``derive``: function adding derived cells (HM, averages) from
    a mapping cell -> value, applied element-wise to replicate arrays and to the point estimates alike."""

    def __init__(self, predictions: Mapping[Row, Mapping[int, Mapping[str, SplitPredictions]]],
                 metrics: Mapping[Cell, Metric], derive: Derive | None = None, *, n_boot: int = 2000,
                 seed: int = 0, level: float = 0.95):
        if n_boot < 1 or not 0 < level < 1:
            raise ValueError("n_boot must be >= 1 and level in (0, 1)")
        self.rows = list(predictions)
        self.metrics = dict(metrics)
        self.derive = derive
        self.n_boot = n_boot
        self.level = level
        self.seeds = sorted({s for by_seed in predictions.values() for s in by_seed})
        self.seed_counts = _resample_counts(_stream(seed, "seeds"), len(self.seeds), n_boot)   # (B, S)
        splits = {m.split for m in self.metrics.values()}
        self._splits = {name: self._split_data(predictions, name, seed) for name in sorted(splits)}
        # per (row, cell): per-seed point values (S,) and per-seed replicates (B, S); NaN = seed not available
        self._compared: dict[tuple[Row, Row], dict[Cell, Comparison]] = {}
        self._point: dict[tuple[Row, Cell], np.ndarray] = {}
        self._reps: dict[tuple[Row, Cell], np.ndarray] = {}
        for cell, metric in self.metrics.items():
            self._evaluate(predictions, cell, metric)

    # construction ---------------------------------------------------------------------------------------------
    def _split_data(self, predictions: Mapping[Row, Mapping[int, Mapping[str, SplitPredictions]]], name: str,
                    seed: int) -> _SplitData:
        found = [p[name] for by_seed in predictions.values() for p in by_seed.values() if name in p]
        if not found:
            raise ValueError(f"no predictions for split {name!r}")
        ref = found[0].aligned_to(np.sort(found[0].item_ids))
        return _SplitData(ref.item_ids, ref.target, _resample_counts(_stream(seed, f"split:{name}"), len(ref),
                                                                     self.n_boot))

    def _correctness(self, predictions: Mapping[Row, Mapping[int, Mapping[str, SplitPredictions]]],
                     split: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows*seeds, n) correctness in the split's item order, and which (row, seed) pairs are present."""
        data = self._splits[split]
        present = np.zeros((len(self.rows), len(self.seeds)), dtype=bool)
        correct = np.zeros((len(self.rows) * len(self.seeds), len(data.item_ids)), dtype=np.float32)
        for r, row in enumerate(self.rows):
            for s, sd in enumerate(self.seeds):
                pred = predictions[row].get(sd, {}).get(split)
                if pred is None:
                    continue
                try:
                    pred = pred.aligned_to(data.item_ids)
                except ValueError as exc:
                    raise ValueError(f"split {split!r}: row {row!r} seed {sd} predicted other test items than "
                                     f"the rest") from exc
                if not np.array_equal(pred.target, data.target):
                    raise ValueError(f"split {split!r}: row {row!r} seed {sd} has other correct labels")
                present[r, s] = True
                correct[r * len(self.seeds) + s] = pred.correct
        return correct, present

    def _evaluate(self, predictions: Mapping[Row, Mapping[int, Mapping[str, SplitPredictions]]], cell: Cell,
                  metric: Metric) -> None:
        data = self._splits[metric.split]
        correct, present = self._correctness(predictions, metric.split)
        keep = np.ones(len(data.item_ids), dtype=bool) if metric.mask is None else np.asarray(metric.mask, bool)
        if keep.shape != data.item_ids.shape:
            raise ValueError(f"cell {cell!r}: mask has {keep.size} entries, split {metric.split!r} has "
                             f"{data.item_ids.size} items")
        weights, correct = data.weights[:, keep], correct[:, keep]
        ones = np.ones((1, weights.shape[1]), dtype=np.float32)
        if metric.per_class:
            classes, label = np.unique(data.target[keep], return_inverse=True)
            onehot = np.zeros((weights.shape[1], len(classes)), dtype=np.float32)
            onehot[np.arange(weights.shape[1]), label] = 1.0
            point, reps = (self._per_class(w, correct, onehot) for w in (ones, weights))
        else:
            point, reps = (self._pooled(w, correct) for w in (ones, weights))
        shape = (len(self.rows), len(self.seeds))
        point, reps = point.reshape(shape), reps.reshape((self.n_boot, *shape))
        point[~present] = np.nan
        reps[:, ~present] = np.nan
        for r, row in enumerate(self.rows):
            self._point[row, cell] = point[r]
            self._reps[row, cell] = reps[:, r]

    @staticmethod
    def _pooled(weights: np.ndarray, correct: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * (weights @ correct.T) / weights.sum(axis=1, keepdims=True)

    @staticmethod
    def _per_class(weights: np.ndarray, correct: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        counts = weights @ onehot                                                      # (B, K)
        hits = (weights @ (correct.T[:, :, None] * onehot[:, None, :]).reshape(len(onehot), -1))
        hits = hits.reshape(len(weights), correct.shape[0], onehot.shape[1])           # (B, rows*seeds, K)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = hits / counts[:, None, :]
        per_class[np.broadcast_to(counts[:, None, :] == 0, per_class.shape)] = np.nan
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(per_class)
            return 100.0 * np.where(valid, per_class, 0).sum(-1) / np.where(valid.any(-1), valid.sum(-1), np.nan)

    # cell values ----------------------------------------------------------------------------------------------
    def _cells(self, row: Row, seed_mask: Mapping[Cell, np.ndarray] | None = None) -> tuple[dict[Cell, float],
                                                                                           _Replicates, int]:
        """Point values and the three replicate sets of every cell of ``row`` (derived cells included), each base
        cell averaged over the seeds in ``seed_mask[cell]`` (default: the seeds the row has); and the number of
        seeds used (the most of any base cell)."""
        points: dict[Cell, float] = {}
        reps = _Replicates({}, {}, {})
        n_seeds = 0
        for cell in self.metrics:
            point, rep = self._point[row, cell], self._reps[row, cell]
            use = np.isfinite(point) if seed_mask is None else seed_mask[cell]
            n_seeds = max(n_seeds, int(use.sum()))
            points[cell] = float(np.mean(point[use])) if use.any() else float("nan")
            reps.both[cell] = _seed_mean(rep, self.seed_counts * use)
            reps.seeds[cell] = _seed_mean(np.broadcast_to(point, rep.shape), self.seed_counts * use)
            reps.items[cell] = _seed_mean(rep, np.broadcast_to(use, rep.shape).astype(np.float32))
        if self.derive is not None:
            points.update({k: float(v) for k, v in self.derive(points).items()})
            for part in (reps.both, reps.seeds, reps.items):
                part.update(self.derive(part))
        return points, reps, n_seeds

    def _summary(self, point: float, reps: _Replicates, cell: Cell, n_seeds: int) -> np.ndarray:
        return variance_corrected(point, reps.both[cell], reps.seeds[cell], reps.items[cell], n_seeds, self.level)

    def intervals(self) -> dict[Row, dict[Cell, Interval]]:
        """Point estimate and percentile interval of every cell (derived ones included) of every row."""
        out = {}
        for row in self.rows:
            points, reps, n_seeds = self._cells(row)
            out[row] = {cell: Interval(points[cell], *percentile_interval(
                self._summary(points[cell], reps, cell, n_seeds), self.level)) for cell in points}
        return out

    def replicates(self, row: Row) -> dict[Cell, np.ndarray]:
        """The (n_boot,) variance-corrected replicates of every cell of ``row`` (for custom summaries)."""
        points, reps, n_seeds = self._cells(row)
        return {cell: self._summary(points[cell], reps, cell, n_seeds) for cell in points}

    def compare(self, a: Row, b: Row) -> dict[Cell, Comparison]:
        """Paired comparison a - b on every cell, over the seeds both rows have for each base cell."""
        if (a, b) not in self._compared:
            self._compared[a, b] = self._compare(a, b)
        return self._compared[a, b]

    def _compare(self, a: Row, b: Row) -> dict[Cell, Comparison]:
        common = {cell: np.isfinite(self._point[a, cell]) & np.isfinite(self._point[b, cell])
                  for cell in self.metrics}
        points_a, reps_a, n_seeds = self._cells(a, common)
        points_b, reps_b, _ = self._cells(b, common)
        out = {}
        for cell in points_a:
            point = points_a[cell] - points_b[cell]
            diff = _Replicates(*({cell: x[cell] - y[cell]} for x, y in zip(reps_a, reps_b)))
            reps = self._summary(point, diff, cell, n_seeds)
            out[cell] = Comparison(point, *percentile_interval(reps, self.level), bootstrap_p_value(reps))
        return out

    def compare_to_best(self, cell: Cell, *, mode: str = "max", rows: Sequence[Row] | None = None
                        ) -> BestComparison:
        """Every row (of ``rows``, default all) against the row with the best point value on ``cell`` ("max" or
        "min"), with Holm-adjusted p-values over those comparisons."""
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        rows = list(self.rows if rows is None else rows)
        values = {row: self._cells(row)[0][cell] for row in rows}
        finite = [row for row in rows if np.isfinite(values[row])]
        if not finite:
            raise ValueError(f"no row has a value for cell {cell!r}")
        best = (max if mode == "max" else min)(finite, key=lambda row: values[row])
        others = [row for row in finite if row != best]
        raw = [self.compare(row, best)[cell] for row in others]
        adjusted = holm([c.p_value for c in raw])
        return BestComparison(cell, best, {row: Comparison(c.difference, c.low, c.high, c.p_value, float(p))
                                           for row, c, p in zip(others, raw, adjusted)})
