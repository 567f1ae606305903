"""Tables, plots and published reference numbers rebuilt from result files (issue 9).

Importing this package is cheap: pandas and matplotlib load only when one of the functions below is first used.

- ``aggregate(records, layout)`` -> tidy pandas DataFrame of every table cell (aggregation rules of
  docs/protocols.md §6)
- ``build_tables(records, layout, *, protocol, out_dir, formats, reference)`` -> {format: path}
- ``tables_from_results(output_dir, protocol, layout)`` -> the same, reading ``<output_dir>/runs``
- ``render_terminal(records, layout)`` -> plain-text table
- ``make_plots(records, kind, out_dir)`` -> list of PNG/PDF paths; ``log_plots_to_mlflow(paths, run_id)``
- ``load_reference(path=None)`` -> ReferenceNumbers (checked against the aggregation rules)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "aggregate": "dplbench.report.aggregation",
    "resolve_layout": "dplbench.report.layouts",
    "layout_spec": "dplbench.report.layouts",
    "LAYOUTS": "dplbench.report.layouts",
    "build_tables": "dplbench.report.tables",
    "render_terminal": "dplbench.report.tables",
    "tables_from_results": "dplbench.report.tables",
    "make_plots": "dplbench.report.plots",
    "log_plots_to_mlflow": "dplbench.report.plots",
    "PLOT_KINDS": "dplbench.report.plots",
    "load_reference": "dplbench.report.reference",
    "ReferenceNumbers": "dplbench.report.reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dplbench.report' has no attribute {name!r}")
