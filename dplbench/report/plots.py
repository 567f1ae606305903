"""Ablation curves, sweep heatmaps, base-vs-novel bars and few-shot curves (PNG + PDF, headless).

Every plotted value comes from :func:`dplbench.report.aggregation.aggregate`, so a plot and a table built from the
same records always agree (e.g. the base-to-novel headline metric is the Average HM = HM of averaged Base/Novel).
Only complete cells are drawn: a value over missing or failed seeds, or an Average over fewer datasets than expected
(the table marks it with a dagger), is left out, and the figure names what it left out.
Figures are drawn on ``matplotlib.figure.Figure`` objects (Agg canvas) and never touch pyplot's global state.
"""

from __future__ import annotations

import json
import logging
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dplbench.errors import DplbenchError, UnknownNameError
from dplbench.report.aggregation import AVERAGE, aggregate
from dplbench.report.layouts import layout_spec, resolve_layout
from dplbench.report.reference import dataset_display, method_display

log = logging.getLogger(__name__)

PLOT_KINDS = ("ablation", "heatmap", "base_novel", "few_shot")
# several kinds at once, each drawn where the records support it: the main table's plots and the sweeps' plots
PLOT_GROUPS = {"all": PLOT_KINDS, "main": ("base_novel", "few_shot"), "sweep": ("ablation", "heatmap")}
PLOT_FORMATS = ("png", "pdf")


def infer_layout(records: Sequence[Mapping[str, Any]]) -> str:
    """Table layout implied by the metric keys of finished records (used when the caller gives none)."""
    keys = {k for r in records if r.get("status") == "done" for k in (r.get("metrics") or {})}
    if {"base", "novel"} <= keys:
        return "base2novel"
    if any(k.startswith("acc/") for k in keys):
        return "cross_dataset"
    if "overall" in keys:
        return "long_tail"
    if "acc" in keys:
        return "few_shot"
    raise DplbenchError("cannot tell the table layout from the records' metrics; pass layout=...")


def _selection(frame, layout: str, metric: str, dataset: str | None, shots: int | str | None = None):
    """Rows of ``metric`` for one dataset (default: the Average, or the only dataset when there is no Average).

    Few-shot sweeps are compared at one shot count: ``shots``, default the largest.
    """
    rows = frame[frame["metric"] == metric]
    if layout_spec(layout).by_shots and shots != "all":
        counts = sorted(int(k) for k in rows["shots"].dropna().unique())
        if shots is None:
            shots = counts[-1]
        if shots not in counts:
            raise UnknownNameError("shot count", str(shots), [str(k) for k in counts])
        rows = rows[rows["shots"] == shots]
    if dataset is None:
        if (rows["dataset"] == AVERAGE).any():
            return rows[rows["dataset"] == AVERAGE], AVERAGE
        names = list(dict.fromkeys(rows["dataset"]))
        if len(names) != 1:
            raise DplbenchError(f"records cover several datasets ({', '.join(names)}) and no Average; "
                                "pass dataset=NAME")
        dataset = names[0]
    picked = rows[rows["dataset"] == dataset]
    if picked.empty:
        raise DplbenchError(f"no {metric!r} values for dataset {dataset!r}; "
                            f"valid choices: {', '.join(dict.fromkeys(rows['dataset']))}")
    return picked, dataset


def _swept_keys(frame) -> dict[str, list[Any]]:
    """Override keys that take more than one value, with their values in sorted order."""
    values: dict[str, set[str]] = {}
    for text in set(frame["overrides"]):
        for key, value in json.loads(text).items():
            values.setdefault(key, set()).add(json.dumps(value))
    swept = {k: [json.loads(v) for v in vs] for k, vs in values.items() if len(vs) > 1}
    return {k: sorted(vs, key=_sort_key) for k, vs in sorted(swept.items())}


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def _complete(rows):
    """(the rows with a complete value, the labels of the variants whose value here is incomplete)."""
    drawn = rows["complete"].astype(bool) & rows["mean"].notna()
    return rows[drawn], list(dict.fromkeys(rows.loc[~drawn, "variant"]))


def _left_out_text(labels: Sequence[str], fig, what: str = "value") -> str:
    """Lines naming the variants not drawn because their value is incomplete, wrapped to the figure's width at a
    medium font ('' when none)."""
    if not labels:
        return ""
    return "\n" + textwrap.fill(f"not drawn, incomplete {what} (missing or failed seeds or datasets): "
                                 + ", ".join(labels), int(10 * fig.get_figwidth()))


def _require_drawn(rows, left_out: Sequence[str], what: str) -> None:
    if rows.empty:
        raise DplbenchError(f"no complete {what} to plot" + (f" ({', '.join(left_out)} incomplete)"
                                                             if left_out else ""))


def _new_figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=fmt, dpi=150)
        tmp.replace(path)
        paths.append(path)
    return paths


def _shots_tag(rows, layout: str) -> str:
    return f"_{int(rows['shots'].dropna().iloc[0])}shot" if layout_spec(layout).by_shots and len(rows) else ""


def _metric_label(layout: str, metric: str, dataset: str, rows=None) -> str:
    names = {"hm": "HM", "base": "Base", "novel": "Novel", "top1": "top-1", "acc": "accuracy", "overall": "overall"}
    spec = layout_spec(layout)
    where = "average over targets" if dataset == AVERAGE and spec.transfer else (
        "average" if dataset == AVERAGE else dataset_display(dataset))
    shots = sorted({int(k) for k in rows["shots"].dropna()}) if rows is not None and spec.by_shots else []
    return f"{names.get(metric, metric)} (%), {where}" + (f", {shots[0]}-shot" if len(shots) == 1 else "")


def _interval(stats: Any, row: Mapping[str, Any], layout: str):
    """The bootstrap interval of one aggregated-frame row (None without statistics or sidecars)."""
    from dplbench.report.significance import cell_of

    return None if stats is None else stats.interval(row["variant"], cell_of(row, layout))


def _no_statistics_reason(stats: Any) -> str:
    if stats is not None and stats.notes:
        return stats.notes[0].split(":")[0]
    return "results lack per-item predictions"


def plot_ablation(frame, layout: str, out_dir: Path, *, protocol: str, metric: str, dataset: str | None,
                  x: str | None, shots: int | None, formats: Sequence[str], stats: Any = None) -> list[Path]:
    """Metric against each swept key (mean over seeds), one line per method and other settings, with the 95 %
    interval of the paired two-way bootstrap (``stats``, a :class:`~dplbench.report.significance.TableStatistics`
    of the same records) as a band; points whose results lack prediction sidecars get no band, and the title says
    so."""
    rows, dataset = _selection(frame, layout, metric, dataset, shots)
    swept = _swept_keys(rows)
    if x is not None:
        if x not in swept:
            raise UnknownNameError("swept key", x, swept)
        swept = {x: swept[x]}
    if not swept:
        raise DplbenchError("no swept option: the records carry no override key with more than one value")
    rows, left_out = _complete(rows)
    _require_drawn(rows, left_out, f"{metric} values")
    paths: list[Path] = []
    for key, values in swept.items():
        fig = _new_figure()
        ax = fig.add_subplot()
        numeric = _numeric(values)
        lines: dict[str, list[tuple[Any, float, Any]]] = {}
        banded = unbanded = 0
        for r in rows.to_dict("records"):
            overrides = json.loads(r["overrides"])
            interval = _interval(stats, r, layout)
            if not overrides:  # a default-options run of the same protocol: drawn as a reference level
                ax.axhline(r["mean"], linestyle="--", linewidth=1, color="grey")
                if interval is not None:
                    ax.axhspan(interval.low, interval.high, color="grey", alpha=0.1, linewidth=0)
                ax.annotate(f"{r['variant']} (defaults)", (0.01, r["mean"]), xycoords=("axes fraction", "data"),
                            fontsize="small", color="grey", va="bottom")
                continue
            if key not in overrides:
                continue
            rest = ", ".join(f"{k.removeprefix('method.')}={v}" for k, v in overrides.items() if k != key)
            name = method_display(r["method"]) + (f" ({rest})" if rest else "")
            lines.setdefault(name, []).append((overrides[key], r["mean"], interval))
            banded, unbanded = banded + (interval is not None), unbanded + (interval is None)
        for name, points in lines.items():
            points.sort(key=lambda p: _sort_key(p[0]))
            xs = [p[0] if numeric else values.index(p[0]) for p in points]
            ys = [p[1] for p in points]
            (line,) = ax.plot(xs, ys, marker="o", label=name)
            if any(p[2] is not None for p in points):  # gaps where a point has no interval
                ax.fill_between(xs, [p[2].low if p[2] else math.nan for p in points],
                                [p[2].high if p[2] else math.nan for p in points], color=line.get_color(),
                                alpha=0.2, linewidth=0)
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(key.removeprefix("method."))
        ax.set_ylabel(_metric_label(layout, metric, dataset, rows))
        if banded and not unbanded:
            band = "band: 95 % CI, paired two-way bootstrap over seeds and test items"
        elif banded:
            band = f"band: 95 % CI where per-item predictions exist; {unbanded} point(s) without"
        else:
            band = f"no interval: {_no_statistics_reason(stats)}"
        ax.set_title(f"{protocol}: {key.removeprefix('method.')} ablation (mean over seeds)\n{band}"
                     + _left_out_text(left_out, fig, "point"), fontsize="medium")
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize="small")
        paths += _save(fig, out_dir, _slug(f"{protocol}_ablation_{key}_{dataset}{_shots_tag(rows, layout)}"), formats)
    return paths


def _tied_with_best(stats: Any, rows: Sequence[Mapping[str, Any]], layout: str, alpha: float) -> set[str] | None:
    """The variants of ``rows`` (one table cell) not significantly below the best of them: paired bootstrap, Holm
    over those rows. None when fewer than two of them have an interval."""
    from dplbench.report.significance import cell_of

    with_interval = [r["variant"] for r in rows if _interval(stats, r, layout) is not None]
    if len(with_interval) < 2:
        return None
    return stats.boot.compare_to_best(cell_of(rows[0], layout), rows=with_interval).tied_with_best(alpha)


def plot_heatmap(frame, layout: str, out_dir: Path, *, protocol: str, metric: str, dataset: str | None,
                 x: str | None, y: str | None, shots: int | None, formats: Sequence[str],
                 stats: Any = None) -> list[Path]:
    """Two-parameter sweep: mean metric on a grid of two swept keys, one panel per method. Cells not
    significantly below the panel's best (paired two-way bootstrap from ``stats``, Holm over the panel's cells)
    are hatched; without prediction sidecars nothing is hatched and the figure says so."""
    import numpy as np
    from matplotlib.patches import Patch, Rectangle

    from dplbench.report.significance import ALPHA

    rows, dataset = _selection(frame, layout, metric, dataset, shots)
    swept = _swept_keys(rows)
    for k in (x, y):
        if k is not None and k not in swept:
            raise UnknownNameError("swept key", k, swept)
    free = [k for k in swept if k not in (x, y)]
    if len(swept) < 2:
        raise DplbenchError(f"a heatmap needs two swept options; the records sweep {len(swept)}: "
                            f"{', '.join(swept) or '(none)'}")
    kx = x if x is not None else free.pop(0)
    ky = y if y is not None else free.pop(0)
    rows, left_out = _complete(rows)
    swept_both = [r["method"] for r in rows.to_dict("records") if {kx, ky} <= set(json.loads(r["overrides"]))]
    methods = list(dict.fromkeys(swept_both))  # methods run at default options have no grid
    if not methods:
        raise DplbenchError(f"no complete value of a run that sets both {kx} and {ky}")
    fig = _new_figure(4.5 * len(methods) + 0.5, 4.0)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    marked_any = False
    for ax, method in zip(axes, methods):
        grid = np.full((len(swept[ky]), len(swept[kx])), np.nan)
        where: dict[str, tuple[int, int]] = {}
        panel = []
        for r in rows[rows["method"] == method].to_dict("records"):
            o = json.loads(r["overrides"])
            if kx in o and ky in o:
                where[r["variant"]] = (swept[ky].index(o[ky]), swept[kx].index(o[kx]))
                grid[where[r["variant"]]] = r["mean"]
                panel.append(r)
        image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap="viridis")
        for (i, j), value in np.ndenumerate(grid):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white", fontsize="small", zorder=3,
                        bbox={"facecolor": "black", "alpha": 0.35, "linewidth": 0, "pad": 1.5})
        tied = _tied_with_best(stats, panel, layout, ALPHA) if stats is not None and panel else None
        if tied is not None:
            marked_any = True
            for variant in sorted(tied):
                i, j = where[variant]
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                       edgecolor=(1.0, 1.0, 1.0, 0.5), linewidth=0))
            ax.legend(handles=[Patch(facecolor="none", edgecolor="black", hatch="//",
                                     label=f"not significantly below this panel's best (Holm, alpha {ALPHA:g})")],
                      loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize="x-small", frameon=False)
        ax.set_xticks(range(len(swept[kx])), [str(v) for v in swept[kx]])
        ax.set_yticks(range(len(swept[ky])), [str(v) for v in swept[ky]])
        ax.set_xlabel(kx.removeprefix("method."))
        ax.set_ylabel(ky.removeprefix("method."))
        ax.set_title(method_display(method))
        fig.colorbar(image, ax=ax, label=_metric_label(layout, metric, dataset, rows))
    blank = _left_out_text(left_out, fig, "cell (left blank)")
    if marked_any:
        fig.suptitle(f"hatched: not significantly below the best cell of its panel\n(paired two-way bootstrap, "
                     f"{stats.n_boot} replicates, Holm over the panel; docs/statistics.md)" + blank,
                     fontsize="x-small")
    else:
        fig.suptitle(f"no significance marks: {_no_statistics_reason(stats)}" + blank, fontsize="x-small")
    return _save(fig, out_dir, _slug(f"{protocol}_heatmap_{kx}_{ky}_{dataset}{_shots_tag(rows, layout)}"), formats)


def value_range(means: Sequence[float], stds: Sequence[float]) -> tuple[float, float]:
    """A value axis zoomed onto the drawn means ± std (10 % margin, at least 1 point), kept within [0, 100]."""
    finite = [(m, 0.0 if math.isnan(s) else s) for m, s in zip(means, stds) if not math.isnan(m)]
    if not finite:
        return 0.0, 100.0
    low, high = min(m - s for m, s in finite), max(m + s for m, s in finite)
    pad = max(1.0, 0.1 * (high - low))
    return max(0.0, low - pad), min(100.0, high + pad)


def plot_base_novel(frame, layout: str, out_dir: Path, *, protocol: str, dataset: str | None,
                    formats: Sequence[str]) -> list[Path]:
    """Grouped bars of Base and Novel accuracy (± std) per method, with the HM marked; a variant whose Base, Novel or
    HM is incomplete here is left out (and named under the title)."""
    if layout != "base2novel":
        raise DplbenchError(f"base-vs-novel plots need base-to-novel records, not {layout}")
    base, dataset = _selection(frame, layout, "base", dataset)
    novel, _ = _selection(frame, layout, "novel", dataset)
    hm, _ = _selection(frame, layout, "hm", dataset)
    left_out = list(dict.fromkeys(v for part in (base, novel, hm) for v in _complete(part)[1]))
    base, novel, hm = (part[~part["variant"].isin(left_out)] for part in (base, novel, hm))
    _require_drawn(base, left_out, f"Base/Novel/HM values for {dataset}")
    labels = list(base["variant"])
    fig = _new_figure(max(5.0, 1.2 * len(labels) + 2), 4.0)
    ax = fig.add_subplot()
    pos = list(range(len(labels)))
    for offset, part, name in ((-0.2, base, "Base"), (0.2, novel, "Novel")):
        errs = [0.0 if math.isnan(s) else s for s in part["std"]]
        ax.bar([p + offset for p in pos], list(part["mean"]), width=0.4, yerr=errs, capsize=3, label=name)
    ax.scatter(pos, list(hm["mean"]), color="black", marker="D", zorder=3, label="HM")
    ax.set_ylim(*value_range([*base["mean"], *novel["mean"], *hm["mean"]],
                             [*base["std"], *novel["std"], *hm["std"]]))
    ax.set_xticks(pos, [textwrap.fill(label, 18) for label in labels], rotation=30, ha="right")
    ax.set_ylabel(f"accuracy (%), {'average' if dataset == AVERAGE else dataset_display(dataset)}")
    ax.set_title(f"{protocol}: base vs novel accuracy" + _left_out_text(left_out, fig), fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_dir, _slug(f"{protocol}_base_novel_{dataset}"), formats)


def plot_few_shot(frame, layout: str, out_dir: Path, *, protocol: str, dataset: str | None,
                  formats: Sequence[str]) -> list[Path]:
    """Accuracy against the number of shots (log2 axis), one line per method variant, ± std band."""
    if layout != "few_shot":
        raise DplbenchError(f"few-shot curves need few-shot records, not {layout}")
    rows, dataset = _selection(frame, layout, "acc", dataset, shots="all")
    rows, left_out = _complete(rows)
    _require_drawn(rows, left_out, f"accuracies for {dataset}")
    fig = _new_figure()
    ax = fig.add_subplot()
    for variant in dict.fromkeys(rows["variant"]):
        part = rows[rows["variant"] == variant].sort_values("shots")
        xs, ys = [int(k) for k in part["shots"]], list(part["mean"])
        sd = [0.0 if math.isnan(s) else s for s in part["std"]]
        ax.plot(xs, ys, marker="o", label=variant)
        ax.fill_between(xs, [a - b for a, b in zip(ys, sd)], [a + b for a, b in zip(ys, sd)], alpha=0.2)
    shots = sorted({int(k) for k in rows["shots"].dropna()})
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel(_metric_label(layout, "acc", dataset))
    ax.set_title(f"{protocol}: few-shot accuracy (mean ± std over seeds)" + _left_out_text(left_out, fig, "point"),
                 fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_dir, _slug(f"{protocol}_few_shot_{dataset}"), formats)


def make_plots(records: Iterable[Mapping[str, Any]], kind: str, out_dir: str | Path, *, layout: str | None = None,
               protocol: str | None = None, metric: str | None = None, dataset: str | None = None,
               x: str | None = None, y: str | None = None, shots: int | None = None,
               formats: Sequence[str] = PLOT_FORMATS, n_boot: int | None = None) -> list[Path]:
    """Draw one kind of plot (``ablation`` | ``heatmap`` | ``base_novel`` | ``few_shot``, or a group of
    :data:`PLOT_GROUPS`: ``all``, ``main``, ``sweep``, each kind of it the records support) into ``out_dir`` (the CLI
    passes ``<output_dir>/plots``); returns the files written.

    ``metric`` defaults to the layout's headline metric (hm, top1, acc, overall); ``dataset`` to the Average;
    ``x`` / ``y`` choose the swept override keys (e.g. ``method.iwtd.p_max``); few-shot sweeps are compared at
    ``shots`` (default: the largest shot count). Ablation bands and heatmap marks come from one bootstrap of the
    records' prediction sidecars (``n_boot`` replicates, docs/statistics.md).
    """
    records = list(records)
    if not records:
        raise DplbenchError("no result records to plot")
    if kind not in PLOT_GROUPS and kind not in PLOT_KINDS:
        raise UnknownNameError("plot kind", kind, (*PLOT_KINDS, *PLOT_GROUPS))
    bad = [f for f in formats if f not in PLOT_FORMATS]
    if bad:
        raise UnknownNameError("plot format", bad[0], PLOT_FORMATS)
    layout = resolve_layout(layout) if layout else infer_layout(records)
    if protocol is None:
        protocol = "_".join(sorted({str((r.get("unit") or {}).get("protocol", layout)) for r in records}))
    spec = layout_spec(layout)
    metric = metric or spec.headline
    if metric not in spec.metrics:
        raise UnknownNameError(f"{layout} metric", metric, spec.metrics)
    frame = aggregate(records, layout)
    out = Path(out_dir)
    common = {"protocol": protocol, "formats": formats}
    computed: list[Any] = []

    def statistics() -> Any:  # one bootstrap, only for the plots that draw it
        if not computed:
            from dplbench.report.significance import DEFAULT_BOOT, table_statistics

            computed.append(table_statistics(records, layout, n_boot=n_boot or DEFAULT_BOOT))
        return computed[0]

    drawers = {
        "ablation": lambda: plot_ablation(frame, layout, out, metric=metric, dataset=dataset, x=x, shots=shots,
                                          stats=statistics(), **common),
        "heatmap": lambda: plot_heatmap(frame, layout, out, metric=metric, dataset=dataset, x=x, y=y, shots=shots,
                                        stats=statistics(), **common),
        "base_novel": lambda: plot_base_novel(frame, layout, out, dataset=dataset, **common),
        "few_shot": lambda: plot_few_shot(frame, layout, out, dataset=dataset, **common),
    }
    if kind not in PLOT_GROUPS:
        return drawers[kind]()
    paths: list[Path] = []
    for name in PLOT_GROUPS[kind]:
        try:
            paths += drawers[name]()
        except DplbenchError as exc:
            log.info("skipping %s plot: %s", name, exc)
    return paths


def log_plots_to_mlflow(paths: Iterable[str | Path], run_id: str | None = None,
                        artifact_path: str = "plots") -> int:
    """Log plot files as MLflow artifacts (to ``run_id``, else the active run); returns how many were logged.

    Returns 0 (with a warning) when mlflow is not installed; raises DplbenchError when there is no run to log to.
    """
    paths = [Path(p) for p in paths]
    try:
        import mlflow
    except ImportError:
        log.warning("mlflow is not installed; %d plot(s) not logged", len(paths))
        return 0
    if run_id is None and mlflow.active_run() is None:
        raise DplbenchError("no active MLflow run to log plots to; pass run_id=...")
    for path in paths:
        if run_id is None:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
        else:
            mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path=artifact_path)
    return len(paths)
