"""Paper-style tables (Markdown, LaTeX booktabs, tidy CSV, plain text) rebuilt from result records.

The aggregated frame (:func:`dplbench.report.aggregation.aggregate`) is turned into a small table model (blocks of
rows, one column per metric / target / shot count), which each renderer prints. Published numbers, when the
records' protocol and dataset names match rows of the reference CSV, appear under the measured row together with
the difference (measured − published).

Statistics (docs/statistics.md, :mod:`dplbench.report.significance`): from the per-item prediction sidecars every
cell gets a 95 % interval and a paired comparison with the best row of its block and column (Holm over the
block's rows). The CSV always carries them (``ci_low``, ``ci_high``, ``ref``, ``diff``, ``diff_ci_low``,
``diff_ci_high``, ``p_value``, ``p_holm``); the other formats mark rows not significantly different from the best
with ``≈`` and, with ``stats="ci"``, print the interval after the value (``stats="none"``: neither).
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dplbench.errors import DplbenchError, UnknownNameError
from dplbench.report.aggregation import AVERAGE, aggregate, format_value, short_key
from dplbench.report.layouts import layout_spec, resolve_layout
from dplbench.schema import TABLE_FORMATS
from dplbench.vocabulary import Layout, StatsMode, TableStyle
from dplbench.report.reference import (AVERAGE_MEMBERS, COMPARABLE_METHODS, DATASET_NAMES, DATASET_ORDER,
                                       NOT_COMPARABLE_NOTES,
                                       PUBLISHED_SHOTS, ReferenceNumbers, dataset_display, load_reference,
                                       method_display)
from dplbench.fileio import atomic_write_text
from dplbench.results import ResultStore

FORMATS = TABLE_FORMATS
STYLES = TableStyle.values()
STATS_MODES = StatsMode.values()
TIED = "≈"
DAGGER = "†"
DASH = "—"
METRIC_HEADERS = {"base": "Base", "novel": "Novel", "hm": "HM", "many": "Many", "medium": "Medium", "few": "Few",
                  "overall": "Overall"}


@dataclass
class Cell:
    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    expected: int = 0
    complete: bool = True
    failed: bool = False
    bold: bool = False
    ci_low: float = math.nan
    ci_high: float = math.nan
    tied: bool = False              # not significantly different from the best row of its block and column


@dataclass
class Row:
    kind: str                       # measured | published | diff
    label: str                      # method name (published rows: the paper's method; diff rows: "Δ vs paper")
    cells: list[Cell | float | None]
    knobs: list[str] = field(default_factory=list)  # measured rows: the value of each knob column ("" otherwise)


@dataclass
class Block:
    title: str | None               # dataset (or source) name shown for the block; None in one-block tables
    rows: list[Row] = field(default_factory=list)


@dataclass
class TableModel:
    protocol: str
    layout: str
    caption: str
    columns: list[str]              # column headers after the label and knob columns
    groups: list[tuple[str, int]]   # optional spanning header: (text, number of columns) covering all columns
    block_header: str | None        # header of the block column (Markdown / text), e.g. "Dataset"
    blocks: list[Block]
    notes: list[str]                # plain-text notes; footnotes start with the dagger
    decimals: int
    show_std: bool
    stats: str = "marks"            # one of STATS_MODES
    style: str = "default"          # one of STYLES
    knobs: list[str] = field(default_factory=list)  # one column per knob that differs between rows (sweeps)


def display_dataset(name: str, style: str = "default") -> str:
    """The published name of a dataset; in the paper style a readable one for the others too (toy_shapes ->
    Toy Shapes)."""
    if name in DATASET_NAMES or name == AVERAGE or style != TableStyle.paper.value:
        return dataset_display(name)
    return name.replace("_", " ").title()


# --- model ------------------------------------------------------------------------------------------------------
def _column_key(row: Mapping[str, Any], layout: str) -> Any:
    spec = layout_spec(layout)
    if spec.transfer:
        return row["dataset"]
    if spec.by_shots:
        return int(row["shots"])
    return row["metric"]


def _block_key(row: Mapping[str, Any], layout: str) -> str:
    return row["source"] if layout_spec(layout).transfer else row["dataset"]


def _resolve_reference(reference: Any, protocol: str) -> ReferenceNumbers | None:
    if reference is False:
        return None
    if isinstance(reference, ReferenceNumbers):
        ref = reference
    elif reference is None:
        try:
            ref = load_reference()
        except DplbenchError:
            return None  # no packaged reference file: tables without published rows
    else:
        ref = load_reference(reference)
    return ref if protocol in ref.protocols() else None


def _reference_key(layout: str, block: str, column: Any) -> tuple[str, str] | None:
    spec = layout_spec(layout)
    if spec.name is Layout.base2novel:
        return block, column
    if spec.transfer:
        return column, "top1"
    return None


def _average_members(frame, layout: str) -> set[str]:
    """Datasets averaged in the Average cells (b2n: every dataset; transfer: the targets)."""
    if layout_spec(layout).transfer:
        return set(frame.loc[frame["role"] == "target", "dataset"])
    return set(frame.loc[frame["role"] == "dataset", "dataset"])


def _published(ref: ReferenceNumbers | None, protocol: str, layout: str, row: Mapping[str, Any],
               average_ok: bool):
    """The published row matching one measured cell, or None (not comparable, or not published)."""
    if ref is None or not _plain(row):
        return None
    key = _reference_key(layout, _block_key(row, layout), _column_key(row, layout))
    if key is None or (key[0] == AVERAGE and not average_ok):
        return None
    return ref.lookup(protocol, row["method"], key[0], key[1])


def _average_comparable(frame, layout: str, protocol: str) -> bool:
    """A measured Average compares with a published one only over exactly the published member datasets."""
    members = AVERAGE_MEMBERS.get(protocol)
    names = {dataset_display(d) for d in _average_members(frame, layout)}
    return members is not None and names == set(members)


def build_model(frame, layout: str, *, protocol: str, reference: Any = None, decimals: int = 2,
                show_std: bool | None = None, stats: str = "marks", statistics: Any = None,
                style: str = "default") -> TableModel:
    """Turn the aggregated frame into blocks of rows with bold best cells, published rows and notes; ``frame``
    annotated by ``statistics.annotate`` (a :class:`~dplbench.report.significance.TableStatistics`) adds the
    intervals and significance marks. ``style="paper"``: means only (unless ``show_std``), readable dataset names,
    standard datasets in the papers' order."""
    _check_stats_mode(stats)
    if style not in STYLES:
        raise UnknownNameError("table style", style, STYLES)
    paper = style == TableStyle.paper.value
    show_std = (not paper) if show_std is None else show_std
    spec = layout_spec(layout)
    layout = spec.name.value
    records = frame.to_dict("records")
    ref = _resolve_reference(reference, protocol)
    average_ok = _average_comparable(frame, layout, protocol)
    columns_keys = list(dict.fromkeys(_column_key(r, layout) for r in records))
    if spec.transfer:
        roles = {r["dataset"]: r["role"] for r in records}
        columns_keys = ([c for c in columns_keys if roles[c] == "source"] + [c for c in columns_keys
                        if roles[c] == "target"] + [AVERAGE])
    block_keys = list(dict.fromkeys(_block_key(r, layout) for r in records))
    if paper:
        block_keys.sort(key=_paper_rank)
    by_cell = {(_block_key(r, layout), r["variant"], _column_key(r, layout)): r for r in records}
    variants = list(dict.fromkeys(r["variant"] for r in records))
    method_of = {r["variant"]: r for r in records}
    knobs, knob_values, fixed = _knobs(frame, spec, method_of)

    blocks: list[Block] = []
    used_sources: dict[str, set[str]] = {}
    for bkey in block_keys:
        block = Block(None if (spec.transfer and len(block_keys) == 1) else display_dataset(bkey, style))
        for variant in variants:
            present = [by_cell.get((bkey, variant, c)) for c in columns_keys]
            if all(p is None for p in present):
                continue
            block.rows.append(Row("measured", method_display(method_of[variant]["method"]),
                                  [_cell(p) if p is not None else None for p in present],
                                  [knob_values[variant].get(k, DASH) for k in knobs]))
            published = []
            for p in present:
                hit = _published(ref, protocol, layout, p, average_ok) if p is not None else None
                published.append(hit)
                if hit is not None:
                    used_sources.setdefault(hit.source, set()).add(hit.method)
            if any(p is not None for p in published):
                measured = block.rows[-1].cells
                block.rows.append(Row("published", COMPARABLE_METHODS[method_of[variant]["method"]],
                                      [p.value if p else None for p in published], [""] * len(knobs)))
                block.rows.append(Row("diff", variant, [
                    (m.mean - p.value) if (p is not None and isinstance(m, Cell) and m.n) else None
                    for m, p in zip(measured, published)], [""] * len(knobs)))
        _mark_best(block, decimals)
        blocks.append(block)

    columns = [_column_header(c, layout, style) for c in columns_keys]
    groups = spec.column_groups(len(columns_keys))
    block_header = None if spec.transfer and len(block_keys) == 1 else ("Source" if spec.transfer else "Dataset")
    standard = ref is not None and any(d in DATASET_NAMES for d in frame["dataset"])
    notes = _notes(layout, records, used_sources, standard, {r["method"] for r in records}, show_std)
    notes += _knob_notes(knobs, fixed)
    if statistics is not None and stats != "none":
        notes += _stats_notes(statistics, stats, any(isinstance(c, Cell) and c.tied for b in blocks
                                                     for r in b.rows for c in r.cells))
    return TableModel(protocol, layout, spec.caption, columns, groups, block_header, blocks, notes, decimals,
                      show_std, stats, style, knobs)


def _knobs(frame, spec: Any, row_of: Mapping[str, Mapping[str, Any]]):
    """The rows' overrides (and shot counts, when a non-few-shot table mixes them) split into knob columns, one per
    key whose value differs between rows, and the settings every row shares. Returns (column headers,
    {row label: {header: value text}}, {header: value text shared by every row})."""
    mixed_shots = not spec.by_shots and frame["shots"].nunique(dropna=False) > 1
    values: dict[str, dict[str, str]] = {}
    for variant, row in row_of.items():
        values[variant] = {short_key(k): format_value(v) for k, v in json.loads(row["overrides"]).items()}
        if mixed_shots:
            values[variant]["shots"] = "full" if pd.isna(row["shots"]) else str(int(row["shots"]))
    keys = list(dict.fromkeys(k for v in values.values() for k in v))
    varying = [k for k in keys if len({v.get(k) for v in values.values()}) > 1]
    fixed = {k: next(iter(values.values()))[k] for k in keys if k not in varying}
    return varying, values, fixed


def _knob_notes(knobs: Sequence[str], fixed: Mapping[str, str]) -> list[str]:
    notes = []
    if knobs:
        notes.append(f"Knob columns ({', '.join(knobs)}): the value each row ran with; {DASH} = the default.")
    if fixed:
        notes.append("Every row: " + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ".")
    return notes


def _paper_rank(name: Any) -> tuple[int, int]:
    """Sort key of the papers' order: the Average first, the standard datasets as published, the rest after
    (a stable sort keeps their given order)."""
    if name == AVERAGE:
        return (0, 0)
    return (1, DATASET_ORDER.index(name)) if name in DATASET_ORDER else (2, 0)


def _check_stats_mode(stats: str) -> None:
    if stats not in STATS_MODES:
        raise UnknownNameError("table statistics mode", stats, STATS_MODES)


def _stats_notes(statistics: Any, stats: str, any_tied: bool) -> list[str]:
    from dplbench.report.significance import ALPHA

    notes = []
    if stats == "ci":
        notes.append(f"[low, high]: {100 * statistics.level:g} % interval of the cell over training seeds and test "
                     "items (docs/statistics.md); HM and Average intervals come from the bootstrap of their parts.")
    if statistics.boot is not None:
        notes.append(f"{TIED}: not significantly different from the reference, the best row of its block and "
                     f"column" + ("" if any_tied else " (no such row here)") + "; other rows are significantly "
                     f"below it; test: {statistics.method_text()}, Holm-adjusted over the block's rows, alpha {ALPHA:g}.")
    notes += [f"{DAGGER} {n}" for n in statistics.notes]
    return notes


def _plain(row: Mapping[str, Any]) -> bool:
    """Default options at the published shot count: the only runs comparable with published rows."""
    return row["overrides"] == "{}" and not pd.isna(row["shots"]) and int(row["shots"]) == PUBLISHED_SHOTS


def _cell(row: Mapping[str, Any]) -> Cell:
    from dplbench.report.significance import ALPHA

    p_holm = row.get("p_holm", math.nan)
    return Cell(mean=float(row["mean"]), std=float(row["std"]), n=int(row["n_seeds"]),
                expected=int(row["expected_seeds"]), complete=bool(row["complete"]),
                failed=bool(row["failed_seeds"]), ci_low=float(row.get("ci_low", math.nan)),
                ci_high=float(row.get("ci_high", math.nan)),
                tied=bool(not pd.isna(p_holm) and float(p_holm) >= ALPHA))


def _column_header(key: Any, layout: str, style: str = "default") -> str:
    spec = layout_spec(layout)
    if spec.transfer:
        return AVERAGE if key == AVERAGE else display_dataset(key, style)
    if spec.by_shots:
        return f"{key}-shot"
    return METRIC_HEADERS.get(key, key)


def _mark_best(block: Block, decimals: int) -> None:
    """Bold the best measured value per column (ties included) when at least two rows compete."""
    measured = [r for r in block.rows if r.kind == "measured"]
    for j in range(len(measured[0].cells) if measured else 0):
        vals = [r.cells[j] for r in measured if isinstance(r.cells[j], Cell) and r.cells[j].n]
        if len(vals) < 2:
            continue
        best = max(round(c.mean, decimals) for c in vals)
        for c in vals:
            c.bold = round(c.mean, decimals) == best


def _notes(layout: str, records: list[Mapping[str, Any]], used_sources: Mapping[str, set[str]],
           standard_suite: bool, methods: set[str], show_std: bool = True) -> list[str]:
    seeds = sorted({s for r in records for s in r["seeds"]} | {s for r in records for s in r["missing_seeds"]}
                   | {s for r in records for s, _ in r["failed_seeds"]})
    expected = sorted({int(r["expected_seeds"]) for r in records if r["expected_seeds"]})
    over = (f"over {expected[0]} seeds ({', '.join(map(str, seeds))})" if len(expected) == 1
            else "over the expected seeds of each cell")
    notes = [("Mean ± sample std (ddof=1)" if show_std else "Mean") + f" {over}; (n/N) = seeds with a result / expected seeds. "
             + layout_spec(layout).rule]
    footnotes = list(dict.fromkeys(n for r in records for n in r["notes"]))
    notes += [f"{DAGGER} {n}" for n in footnotes]
    if used_sources:
        cited = "; ".join(f"{', '.join(sorted(ms))}: {src}" for src, ms in sorted(used_sources.items()))
        notes.append(f"Published rows (paper) and Δ = measured − published, from results/reference: {cited}.")
    if standard_suite:
        notes += [f"Note: {NOT_COMPARABLE_NOTES[m]}." for m in sorted(methods) if m in NOT_COMPARABLE_NOTES]
    return notes


# --- cell text --------------------------------------------------------------------------------------------------
def _cell_text(cell: Cell | float | None, kind: str, decimals: int, show_std: bool, pm: str,
               stats: str = "none") -> tuple[str, bool]:
    """(text, bold) of one cell in plain characters; the caller escapes / decorates it."""
    if cell is None or (not isinstance(cell, Cell) and math.isnan(cell)):
        return DASH, False
    if kind == "published":
        return f"{cell:.{decimals}f}", False
    if kind == "diff":
        return (f"{0.0:.{decimals}f}" if round(cell, decimals) == 0 else f"{cell:+.{decimals}f}"), False
    if cell.n == 0:
        return DASH + (DAGGER if cell.failed else ""), False
    text = f"{cell.mean:.{decimals}f}"
    if show_std and cell.n >= 2:
        text += f" {pm} {cell.std:.{decimals}f}"
    if stats == "ci" and math.isfinite(cell.ci_low):
        text += f" [{cell.ci_low:.{decimals}f}, {cell.ci_high:.{decimals}f}]"
    if cell.n != cell.expected:
        text += f" ({cell.n}/{cell.expected})"
    if not cell.complete:
        text += DAGGER
    if stats != "none" and cell.tied:
        text += TIED
    return text, cell.bold


def _row_label(row: Row, tex: bool = False) -> str:
    if row.kind == "published":
        return f"{row.label} (paper)"
    if row.kind == "diff":
        return r"$\Delta$ vs paper" if tex else "Δ vs paper"
    return row.label


# --- Markdown / terminal ------------------------------------------------------------------------------------------
def _grid(model: TableModel, *, bold: bool) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, body rows (with a leading block column when there are blocks) and indices of block starts."""
    header = ([model.block_header] if model.block_header else []) + ["Method"] + model.knobs + list(model.columns)
    if layout_spec(model.layout).transfer and header:
        idx = 1 if model.block_header else 0
        header[idx + 1 + len(model.knobs)] += " (source)"
    body: list[list[str]] = []
    starts: list[int] = []
    for block in model.blocks:
        starts.append(len(body))
        for i, row in enumerate(block.rows):
            cells = []
            for c in row.cells:
                text, is_bold = _cell_text(c, row.kind, model.decimals, model.show_std, "±", model.stats)
                cells.append(f"**{text}**" if bold and is_bold else text)
            lead = []
            if model.block_header:
                title = block.title if i == 0 else ""
                lead = [f"**{title}**" if bold and title else title]
            body.append(lead + [_row_label(row)] + row.knobs + cells)
    return header, body, starts


def _padded(cells: Sequence[str], widths: Sequence[int], n_labels: int) -> list[str]:
    return [c.ljust(w) if i < n_labels else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]


def to_markdown(model: TableModel) -> str:
    header, body, _ = _grid(model, bold=True)
    n_labels = (2 if model.block_header else 1) + len(model.knobs)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    widths = [max(w, 3) for w in widths]
    lines = [f"### {model.protocol}: {model.caption}", ""]
    lines.append("| " + " | ".join(_padded(header, widths, n_labels)) + " |")
    lines.append("| " + " | ".join((":" + "-" * (w - 1)) if i < n_labels else ("-" * (w - 1) + ":")
                                   for i, w in enumerate(widths)) + " |")
    lines += ["| " + " | ".join(_padded(r, widths, n_labels)) + " |" for r in body]
    lines.append("")
    lines += [f"{note}  " if i < len(model.notes) - 1 else note for i, note in enumerate(model.notes)]
    return "\n".join(lines) + "\n"


def to_text(model: TableModel) -> str:
    header, body, starts = _grid(model, bold=False)
    n_labels = (2 if model.block_header else 1) + len(model.knobs)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    lines = [f"{model.protocol}: {model.caption}", "  ".join(_padded(header, widths, n_labels)).rstrip(), rule]
    for i, r in enumerate(body):
        if i in starts and i > 0:
            lines.append(rule)
        lines.append("  ".join(_padded(r, widths, n_labels)).rstrip())
    lines += [""] + model.notes
    return "\n".join(lines) + "\n"


# --- HTML -------------------------------------------------------------------------------------------------------
def to_html(model: TableModel) -> str:
    """A ``<table>`` (caption, spanning block titles, bold best cells) followed by the notes."""
    from html import escape

    header, _, _ = _grid(model, bold=False)
    lines = [f'<table class="results" data-protocol="{escape(model.protocol)}">',
             f"<caption>{escape(model.caption)}</caption>",
             "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for block in model.blocks:
        for i, row in enumerate(block.rows):
            cells = []
            if model.block_header:
                cells.append(f'<th scope="rowgroup" rowspan="{len(block.rows)}">{escape(block.title or "")}</th>'
                             if i == 0 else "")
            cells.append(f'<td class="label {row.kind}">{escape(_row_label(row))}</td>')
            cells += [f'<td class="knob">{escape(value)}</td>' for value in row.knobs]
            for c in row.cells:
                text, bold = _cell_text(c, row.kind, model.decimals, model.show_std, "±", model.stats)
                cells.append(f"<td><b>{escape(text)}</b></td>" if bold else f"<td>{escape(text)}</td>")
            lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    if model.notes:
        lines.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in model.notes) + "</ul>")
    return "\n".join(lines) + "\n"


# --- LaTeX ------------------------------------------------------------------------------------------------------
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"—": "---", "–": "--", "±": r"$\pm$", "Δ": r"$\Delta$", "−": "$-$", DAGGER: r"$^\dagger$",
                "→": r"$\rightarrow$",
               TIED: r"$^{\approx}$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX specials; map the few Unicode symbols used here, drop accents, replace other non-ASCII."""
    out = []
    for ch in text:
        if ch in _TEX_SPECIAL:
            out.append(_TEX_SPECIAL[ch])
        elif ch in _TEX_UNICODE:
            out.append(_TEX_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            ascii_ = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(ascii_ or "?")
    return "".join(out)


def latex_label(model: TableModel) -> str:
    """``tab:<protocol>-<layout>`` (plus ``-paper`` for the paper style): unique per table file a run writes."""
    parts = [model.protocol, model.layout] + ([model.style] if model.style != TableStyle.default.value else [])
    return "tab:" + "-".join(p.replace("_", "-") for p in parts)


def to_latex(model: TableModel) -> str:
    ncols = 1 + len(model.knobs) + len(model.columns)
    lines = [f"% dplbench table {latex_label(model)}: needs \\usepackage{{booktabs}} "
             "(\\toprule, \\midrule, \\cmidrule, \\bottomrule)",
             r"\begin{table}[t]", r"\centering", r"\small" if ncols > 6 else "",
             r"\caption{" + tex_escape(f"{model.caption} ({model.protocol}).") + "}",
             r"\label{" + latex_label(model) + "}",
             r"\begin{tabular}{l" + "c" * (len(model.knobs) + len(model.columns)) + "}", r"\toprule"]
    lines = [line for line in lines if line]
    if model.groups:
        parts, rules, col = [""] * (1 + len(model.knobs)), [], 2 + len(model.knobs)
        for text, span in model.groups:
            parts.append(r"\multicolumn{%d}{c}{%s}" % (span, tex_escape(text)) if span > 1 else tex_escape(text))
            if text:
                rules.append(r"\cmidrule(lr){%d-%d}" % (col, col + span - 1))
            col += span
        lines.append(" & ".join(parts) + r" \\")
        lines.append("".join(rules))
    lines.append(" & ".join(["Method"] + [tex_escape(c) for c in [*model.knobs, *model.columns]]) + r" \\")
    lines.append(r"\midrule")
    for b, block in enumerate(model.blocks):
        if b > 0:
            lines.append(r"\midrule")
        if block.title is not None:
            lines.append(r"\multicolumn{%d}{l}{\textit{%s}} \\" % (ncols, tex_escape(block.title)))
        for row in block.rows:
            cells = []
            for c in row.cells:
                text, bold = _cell_text(c, row.kind, model.decimals, model.show_std, "±", model.stats)
                text = tex_escape(text)
                cells.append(r"\textbf{" + text + "}" if bold else text)
            label = _row_label(row, tex=True)
            label = label if row.kind == "diff" else tex_escape(label)
            if row.kind != "measured":
                label = r"\quad " + label
            lines.append(" & ".join([label] + [tex_escape(k) for k in row.knobs] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if model.notes:
        lines.append(r"\par\smallskip")
        lines.append(r"\begin{minipage}{\linewidth}\footnotesize")
        lines += [tex_escape(n) + r"\par" for n in model.notes]
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# --- CSV --------------------------------------------------------------------------------------------------------
def to_csv(frame, layout: str, *, protocol: str, reference: Any = None) -> str:
    """Tidy CSV: one row per variant x dataset x metric (x shots), per-seed values in ``seed_<s>`` columns."""
    layout = resolve_layout(layout)
    ref = _resolve_reference(reference, protocol)
    out = frame.drop(columns=["seeds", "values", "notes"]).copy()
    seeds = sorted({s for t in frame["seeds"] for s in t} | {s for t in frame["missing_seeds"] for s in t}
                   | {s for t in frame["failed_seeds"] for s, _ in t})
    for s in seeds:
        out[f"seed_{s}"] = [dict(zip(ss, vv)).get(s, math.nan) for ss, vv in zip(frame["seeds"], frame["values"])]
    out["missing_seeds"] = [" ".join(map(str, t)) for t in frame["missing_seeds"]]
    out["failed_seeds"] = [" ".join(str(s) for s, _ in t) for t in frame["failed_seeds"]]
    published, sources = [], []
    average_ok = _average_comparable(frame, layout, protocol)
    for r in frame.to_dict("records"):
        hit = _published(ref, protocol, layout, r, average_ok)
        published.append(hit.value if hit else math.nan)
        sources.append(hit.source if hit else "")
    out["published"] = published
    out["published_diff"] = out["mean"] - out["published"]
    out["published_source"] = sources
    out["notes"] = [" | ".join(n) for n in frame["notes"]]
    return pd.DataFrame(out).to_csv(index=False, float_format="%.6f", lineterminator="\n")


# --- public entry points ------------------------------------------------------------------------------------------
def _records_for(records: Iterable[Mapping[str, Any]], protocol: str) -> list[Mapping[str, Any]]:
    records = list(records)
    kept = [r for r in records if (r.get("unit") or {}).get("protocol", protocol) == protocol]
    if not kept:
        raise DplbenchError(f"no result records for protocol {protocol!r} "
                            f"({len(records)} record(s) of other protocols given)")
    return kept


def build_tables(records: Iterable[Mapping[str, Any]], layout: str, *, protocol: str, out_dir: str | Path,
                 formats: Sequence[str] = FORMATS, reference: Any = None, decimals: int = 2,
                 round_per_seed: int | None = None, show_std: bool | None = None, stats: str = "marks",
                 statistics: Any = None, n_boot: int | None = None, style: str = "default") -> dict[str, Path]:
    """Write ``<out_dir>/<protocol>.{md,tex,csv}`` (style ``paper``: ``<protocol>.paper.{md,tex,csv}``, beside
    the default files); returns {format: path}.

    ``out_dir`` is the tables folder itself (the CLI passes ``<output_dir>/tables``). ``reference``: None = the
    repository's reference numbers when they cover the protocol; False = none; a path or ReferenceNumbers.
    ``stats``: ``marks`` (significance marks), ``ci`` (marks and intervals) or ``none`` in md/tex; the CSV always
    has the statistics columns. ``statistics``: a precomputed :func:`~dplbench.report.significance.
    table_statistics` of the same records (computed here otherwise, with ``n_boot`` replicates).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UnknownNameError("table format", unknown[0], FORMATS)
    _check_stats_mode(stats)
    records = _records_for(records, protocol)
    frame, statistics = _annotated_frame(records, layout, round_per_seed, statistics, n_boot)
    ref = _resolve_reference(reference, protocol) or False
    model = build_model(frame, layout, protocol=protocol, reference=ref, decimals=decimals, show_std=show_std,
                        stats=stats, statistics=statistics, style=style)
    writers = {"md": lambda: to_markdown(model), "tex": lambda: to_latex(model),
               "csv": lambda: to_csv(frame, layout, protocol=protocol, reference=ref)}
    paths = {}
    for fmt in formats:
        path = table_file(out_dir, protocol, fmt, style)
        atomic_write_text(path, writers[fmt]())
        paths[fmt] = path
    return paths


def table_file(out_dir: str | Path, protocol: str, fmt: str, style: str = "default") -> Path:
    """``<protocol>.<fmt>``, or ``<protocol>.<style>.<fmt>`` for another style: the paper-style files sit beside
    the default ones instead of replacing them."""
    tag = "" if style == TableStyle.default.value else f".{style}"
    return Path(out_dir) / f"{protocol}{tag}.{fmt}"


def _annotated_frame(records: list[Mapping[str, Any]], layout: str, round_per_seed: int | None, statistics: Any,
                     n_boot: int | None):
    from dplbench.report.significance import DEFAULT_BOOT, table_statistics

    frame = aggregate(records, layout, round_per_seed=round_per_seed)
    if statistics is None:
        statistics = table_statistics(records, layout, n_boot=n_boot or DEFAULT_BOOT)
    return statistics.annotate(frame), statistics


def render_terminal(records: Iterable[Mapping[str, Any]], layout: str, *, protocol: str | None = None,
                    reference: Any = None, decimals: int = 2, round_per_seed: int | None = None,
                    show_std: bool | None = None, stats: str = "marks", statistics: Any = None,
                    n_boot: int | None = None, style: str = "default") -> str:
    """Plain-text table (aligned columns, notes below) to print at the end of ``dplbench run``."""
    _check_stats_mode(stats)
    records = list(records)
    if protocol is None:
        protocols = sorted({str((r.get("unit") or {}).get("protocol", "")) for r in records})
        if len(protocols) != 1:
            raise DplbenchError(f"records of several protocols ({', '.join(protocols)}); pass protocol=NAME")
        protocol = protocols[0]
    records = _records_for(records, protocol)
    frame, statistics = _annotated_frame(records, layout, round_per_seed, statistics, n_boot)
    model = build_model(frame, layout, protocol=protocol, reference=reference, decimals=decimals,
                        show_std=show_std, stats=stats, statistics=statistics, style=style)
    return to_text(model)


def tables_from_results(output_dir: str | Path, protocol: str, layout: str, **kwargs: Any) -> dict[str, Path]:
    """Read every result file of ``protocol`` under ``output_dir`` and write the workspace's tables."""
    store = ResultStore(output_dir)
    records = list(store.iter_records(protocol))
    if not records:
        raise DplbenchError(f"no result files under {store.workspace.protocol_runs(protocol)}")
    return build_tables(records, layout, protocol=protocol, out_dir=store.workspace.tables, **kwargs)
