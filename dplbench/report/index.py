"""The results index: one Markdown and one static HTML page over every protocol in an output folder.

Per protocol (and per suite / backbone found under it): the table, the plots already drawn under the plots folder,
a per-variant summary (result files done / failed, headline value), the failed and missing units, and the command
that opens the MLflow store. The HTML page needs no server: plots are embedded as ``data:`` URIs, tables inline.
Everything is rebuilt from the result files, like the tables themselves.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from dplbench.fileio import atomic_write_text
from dplbench.report.aggregation import AVERAGE, aggregate
from dplbench.report.api import is_variant
from dplbench.report.layouts import layout_spec
from dplbench.report.tables import TableModel, build_model, table_file, to_html, to_markdown
from dplbench.results import ResultStore
from dplbench.schema import TABLE_FORMATS
from dplbench.vocabulary import TableStyle
from dplbench.workspace import Workspace


@dataclass
class VariantSummary:
    label: str
    done: int
    failed: int
    headline: str           # e.g. "74.12 (HM, Average)"; "—" when no complete value exists


@dataclass
class ProtocolSection:
    protocol: str
    suite: str
    backbone: str
    model: TableModel
    variants: list[VariantSummary]
    problems: list[str]     # failed units, missing seeds, partial averages (the aggregation's notes)
    plots: list[Path]       # PNGs under the plots folder
    tables: list[Path]      # the protocol's md/tex/csv files under the tables folder, where written

    @property
    def title(self) -> str:
        return f"{self.protocol} (suite {self.suite}, backbone {self.backbone})"


def _protocols(ws: Workspace) -> list[str]:
    """Protocol folders under runs/, in the catalog's order, unknown ones after it."""
    from dplbench.catalog import PROTOCOLS

    found = sorted(p.name for p in ws.runs.iterdir() if p.is_dir()) if ws.runs.is_dir() else []
    known = [p for p in PROTOCOLS.list() if p in found]
    return known + [p for p in found if p not in known]


def _layout(protocol: str, records: Sequence[Mapping[str, Any]]) -> str:
    from dplbench.catalog import PROTOCOLS
    from dplbench.errors import UnknownNameError
    from dplbench.report.plots import infer_layout

    try:
        return PROTOCOLS.get(protocol).table.get("layout", protocol)
    except UnknownNameError:
        return infer_layout(records)


def _owner(stem: str, protocols: Sequence[str]) -> str | None:
    """The protocol a plot file belongs to: the longest protocol name that prefixes its stem."""
    owners = [p for p in protocols if stem.startswith(p + "_")]
    return max(owners, key=len) if owners else None


def _headline(frame, layout: str, method: str, overrides: str) -> str:
    spec = layout_spec(layout)
    rows = frame[(frame["method"] == method) & (frame["overrides"] == overrides) & (frame["metric"] == spec.headline)]
    if spec.by_shots and len(rows):
        rows = rows[rows["shots"] == rows["shots"].max()]
    average = rows[rows["dataset"] == AVERAGE]
    rows = average if len(average) else rows
    if len(rows) != 1:
        return "—"
    row = rows.iloc[0]
    where = AVERAGE if row["dataset"] == AVERAGE else str(row["dataset"])
    if spec.by_shots:
        where += f", {int(row['shots'])}-shot"
    if not row["complete"]:
        return f"— ({spec.headline}, {where} incomplete)"
    return f"{row['mean']:.2f} ({spec.headline}, {where})"


def _section(ws: Workspace, protocol: str, suite: str, backbone: str, records: list[dict[str, Any]],
             plots: list[Path]) -> ProtocolSection:
    layout = _layout(protocol, records)
    frame = aggregate(records, layout)
    main = [r for r in records if not is_variant(r)]
    if main and len(main) < len(records):  # the main table, as `dplbench table` shows it; variants in the summary
        model = build_model(aggregate(main, layout), layout, protocol=protocol, stats="none")
        hidden = len({json.dumps([r["unit"]["method"], r["unit"].get("overrides")], sort_keys=True, default=str)
                      for r in records if is_variant(r)})
        model.notes.append(f"{hidden} variant(s) (units run with overrides, e.g. sweeps) are not in this table: see "
                           "'Per variant' below, or `dplbench table report.variants=true`.")
    else:
        model = build_model(frame, layout, protocol=protocol, stats="none")
    counts: dict[tuple[str, str], list[int]] = {}
    for record in records:
        unit = record.get("unit") or {}
        key = (str(unit.get("method")), json.dumps(dict(unit.get("overrides") or {}), sort_keys=True, default=str))
        counts.setdefault(key, [0, 0])[0 if record.get("status") == "done" else 1] += 1
    variants = []
    for row in frame.drop_duplicates(["method", "overrides"]).to_dict("records"):
        done, failed = counts.get((row["method"], row["overrides"]), [0, 0])
        variants.append(VariantSummary(row["variant"], done, failed, _headline(frame, layout, row["method"], row["overrides"])))
    problems = list(dict.fromkeys(n for notes in frame["notes"] for n in notes))
    tables = [p for p in (table_file(ws.tables, protocol, fmt, style) for style in TableStyle.values()
                          for fmt in TABLE_FORMATS) if p.is_file()]
    return ProtocolSection(protocol, suite, backbone, model, variants, problems, plots, tables)


def collect_sections(output_dir: str | Path) -> list[ProtocolSection]:
    """Every (protocol, suite, backbone) with result files under ``output_dir``."""
    ws = Workspace.at(output_dir)
    protocols = _protocols(ws)
    pngs = sorted(ws.plots.glob("*.png")) if ws.plots.is_dir() else []
    sections = []
    store = ResultStore(ws.root)
    for protocol in protocols:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in store.iter_records(protocol):
            config = record.get("config") or {}
            key = (str(config.get("suite", "toy")), str((config.get("backbone") or {}).get("name", "unrecorded")))
            groups.setdefault(key, []).append(record)
        plots = [p for p in pngs if _owner(p.stem, protocols) == protocol]
        for (suite, backbone), records in sorted(groups.items()):
            sections.append(_section(ws, protocol, suite, backbone, records, plots))
    return sections


def mlflow_command(ws: Workspace) -> str:
    return f"mlflow ui --backend-store-uri {ws.mlflow_uri}"


# --- rendering ---------------------------------------------------------------------------------------------------
def _rel(ws: Workspace, path: Path) -> str:
    return path.relative_to(ws.root).as_posix()


def _mlflow_text(ws: Workspace) -> str:
    if ws.mlflow_db.is_file():
        return "Open the MLflow runs (then browse http://127.0.0.1:5000):"
    return "No MLflow database in this folder (runs without tracking); with one, open it with:"


def render_markdown(ws: Workspace, sections: Sequence[ProtocolSection]) -> str:
    lines = [f"# dplbench results: {ws.root}", "", _mlflow_text(ws), "", "```", mlflow_command(ws), "```", ""]
    if not sections:
        lines.append("No result files yet.")
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.tables:
            lines += ["Table files: " + ", ".join(f"[{p.name}]({_rel(ws, p)})" for p in s.tables), ""]
        lines += to_markdown(s.model).splitlines()[2:] + [""]
        lines += ["### Per variant", "", "| Variant | Result files done | Failed | Headline |", "| :-- | --: | --: | :-- |"]
        lines += [f"| {v.label} | {v.done} | {v.failed} | {v.headline} |" for v in s.variants]
        lines += ["", "### Failed and missing units", ""]
        lines += [f"- {p}" for p in s.problems] or ["None: every expected unit has a finished result file."]
        lines.append("")
        if s.plots:
            lines += ["### Plots", ""] + [f"![{p.stem}]({_rel(ws, p)})" for p in s.plots] + [""]
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}
table.results,table.summary{border-collapse:collapse;margin:0.5em 0}
table.results td,table.results th,table.summary td,table.summary th{border:1px solid #ccc;padding:2px 8px}
table.results td:not(.label){text-align:right}
caption{caption-side:top;text-align:left;font-style:italic}
.notes{font-size:small;color:#444} img{max-width:48em;display:block;margin:0.5em 0}
pre{background:#f4f4f4;padding:0.5em}"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(ws: Workspace, sections: Sequence[ProtocolSection]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>dplbench results: {escape(str(ws.root))}</title>", f"<style>{_STYLE}</style></head><body>",
           f"<h1>dplbench results: {escape(str(ws.root))}</h1>",
           f"<p>{escape(_mlflow_text(ws))}</p><pre>{escape(mlflow_command(ws))}</pre>"]
    if sections:
        out.append("<ul>" + "".join(f'<li><a href="#s{i}">{escape(s.title)}</a></li>'
                                    for i, s in enumerate(sections)) + "</ul>")
    else:
        out.append("<p>No result files yet.</p>")
    for i, s in enumerate(sections):
        out.append(f'<section id="s{i}"><h2>{escape(s.title)}</h2>')
        if s.tables:
            out.append("<p>Table files: " + ", ".join(f'<a href="{escape(_rel(ws, p))}">{escape(p.name)}</a>'
                                                     for p in s.tables) + "</p>")
        out.append(to_html(s.model))
        out.append('<h3>Per variant</h3><table class="summary"><thead><tr><th>Variant</th><th>Result files done'
                   "</th><th>Failed</th><th>Headline</th></tr></thead><tbody>")
        out += [f"<tr><td>{escape(v.label)}</td><td>{v.done}</td><td>{v.failed}</td><td>{escape(v.headline)}</td>"
                "</tr>" for v in s.variants]
        out.append("</tbody></table><h3>Failed and missing units</h3>")
        out.append('<ul class="problems">' + "".join(f"<li>{escape(p)}</li>" for p in s.problems) + "</ul>"
                   if s.problems else "<p>None: every expected unit has a finished result file.</p>")
        if s.plots:
            out.append("<h3>Plots</h3>")
            out += [f'<figure><img src="{_data_uri(p)}" alt="{escape(p.stem)}"><figcaption>{escape(p.name)}'
                    "</figcaption></figure>" for p in s.plots]
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def build_index(output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``index.md`` and ``index.html`` at the top of ``output_dir``; returns their paths."""
    ws = Workspace.at(output_dir)
    sections = collect_sections(ws.root)
    atomic_write_text(ws.index_md, render_markdown(ws, sections))
    atomic_write_text(ws.index_html, render_html(ws, sections))
    return ws.index_md, ws.index_html
