"""Plots rebuilt from result files: every kind is written as a valid, non-trivial PNG and PDF."""

from __future__ import annotations

import csv
import io
import json
import sys
import types

import pytest

from dplbench.errors import DplbenchError, UnknownNameError
from dplbench.report import aggregate, build_tables, log_plots_to_mlflow, make_plots
from dplbench.report.plots import _swept_keys, infer_layout
from test_report_tables import SEEDS, b2n, few_shot_records, make_record, toy_b2n_records, write_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
P_MAX = (0.1, 0.3, 0.5)
RES_WEIGHT = (0.01, 0.05)


def sweep_records():
    """A 3 x 2 grid over two DroPLe options on two toy datasets, plus default-option CoOp runs."""
    out = []
    for p in P_MAX:
        for w in RES_WEIGHT:
            overrides = {"method.iwtd.p_max": p, "method.res.weight": w}
            for d, dataset in enumerate(("toy_shapes", "toy_glyphs")):
                for seed in SEEDS[:2]:
                    base, novel = 80 + 10 * p - d, 65 + 100 * w - 2 * d
                    out.append(make_record("base2novel", "drople", dataset, seed, b2n(base, novel, seed),
                                           overrides=overrides, config={"seeds": SEEDS[:2]}))
    for dataset in ("toy_shapes", "toy_glyphs"):
        for seed in SEEDS[:2]:
            out.append(make_record("base2novel", "coop", dataset, seed, b2n(82, 60, seed),
                                   config={"seeds": SEEDS[:2]}))
    return out


def _assert_valid(paths, n_expected):
    assert len(paths) == n_expected
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1024, path
        if path.suffix == ".png":
            assert data.startswith(PNG_MAGIC)
        else:
            assert path.suffix == ".pdf" and data.startswith(b"%PDF-") and b"%%EOF" in data[-64:]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("sweep"), sweep_records())


def test_ablation_curves_one_per_swept_key(sweep, tmp_path):
    paths = make_plots(sweep, "ablation", tmp_path / "plots")
    _assert_valid(paths, 4)  # two swept keys x (png, pdf)
    names = sorted(p.name for p in paths)
    assert names[0] == "base2novel_ablation_method.iwtd.p_max_Average.pdf"
    only = make_plots(sweep, "ablation", tmp_path / "one", x="method.res.weight", dataset="toy_glyphs",
                      formats=("png",))
    _assert_valid(only, 1)
    assert only[0].name == "base2novel_ablation_method.res.weight_toy_glyphs.png"


def test_ablation_points_are_the_table_numbers(sweep):
    """The plotted y values are the Average HM rows of the aggregated table: HM of averaged Base/Novel."""
    frame = aggregate(sweep, "base2novel")
    rows = frame[(frame.dataset == "Average") & (frame.metric == "hm") & (frame.method == "drople")]
    assert len(rows) == len(P_MAX) * len(RES_WEIGHT)
    swept = _swept_keys(rows)
    assert swept == {"method.iwtd.p_max": list(P_MAX), "method.res.weight": list(RES_WEIGHT)}
    r = rows[rows.overrides == json.dumps({"method.iwtd.p_max": 0.5, "method.res.weight": 0.05}, sort_keys=True)]
    base, novel = 85 - 0.5 - 0.15, 70 - 1 + 0.15  # averaged over both datasets and seeds 1-2 (offsets -0.3, 0)
    assert float(r["mean"].iloc[0]) == pytest.approx(2 * base * novel / (base + novel))


def test_heatmap_for_two_parameter_sweep(sweep, tmp_path):
    paths = make_plots(sweep, "heatmap", tmp_path, y="method.iwtd.p_max")
    _assert_valid(paths, 2)
    assert paths[0].name == "base2novel_heatmap_method.res.weight_method.iwtd.p_max_Average.png"
    with pytest.raises(UnknownNameError, match="swept key"):
        make_plots(sweep, "heatmap", tmp_path, x="method.nope")


def test_base_vs_novel_bars(tmp_path):
    records = write_records(tmp_path / "runs", toy_b2n_records())
    _assert_valid(make_plots(records, "base_novel", tmp_path / "plots"), 2)
    _assert_valid(make_plots(records, "base_novel", tmp_path / "plots", dataset="toy_glyphs", formats=("png",)), 1)


def test_few_shot_curves(tmp_path):
    records = write_records(tmp_path / "runs", few_shot_records())
    assert infer_layout(records) == "few_shot"
    paths = make_plots(records, "few_shot", tmp_path / "plots")
    _assert_valid(paths, 2)
    assert paths[0].name == "few_shot_few_shot_Average.png"


def test_few_shot_sweep_is_compared_at_one_shot_count(tmp_path):
    records = write_records(tmp_path / "runs", [
        make_record("few_shot", "coop", "toy_shapes", s, {"acc": 40 + 5 * k + n_ctx}, shots=k,
                    overrides={"method.n_ctx": n_ctx}) for n_ctx in (4, 16) for k in (1, 2, 4) for s in SEEDS])
    default = make_plots(records, "ablation", tmp_path / "plots", formats=("png",))
    _assert_valid(default, 1)
    assert default[0].name == "few_shot_ablation_method.n_ctx_Average_4shot.png"  # the largest shot count
    one = make_plots(records, "ablation", tmp_path / "plots", shots=1, formats=("png",))
    _assert_valid(one, 1)
    assert one[0].name.endswith("_1shot.png")
    with pytest.raises(UnknownNameError, match="shot count"):
        make_plots(records, "ablation", tmp_path / "plots", shots=3)


def test_all_kinds_skip_what_does_not_apply(sweep, tmp_path):
    paths = make_plots(sweep, "all", tmp_path, formats=("png",))
    kinds = sorted({p.stem.split("_")[1] for p in paths})
    assert kinds == ["ablation", "base", "heatmap"]  # no few-shot curve for base-to-novel records
    _assert_valid(paths, 4)


def test_plot_errors_are_readable(tmp_path):
    records = write_records(tmp_path / "runs", toy_b2n_records())
    with pytest.raises(DplbenchError, match="no swept option"):
        make_plots(records, "ablation", tmp_path)
    with pytest.raises(DplbenchError, match="few-shot curves need few-shot records"):
        make_plots(records, "few_shot", tmp_path)
    with pytest.raises(UnknownNameError):
        make_plots(records, "violin", tmp_path)
    with pytest.raises(UnknownNameError):
        make_plots(records, "base_novel", tmp_path, formats=("svg",))
    with pytest.raises(DplbenchError, match="no 'base' values for dataset 'nope'"):
        make_plots(records, "base_novel", tmp_path, dataset="nope")
    assert not list(tmp_path.glob("*.png"))


def test_log_plots_to_mlflow(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("mlflow")
    fake.active_run = lambda: None
    fake.log_artifact = lambda path, artifact_path=None: calls.append(("active", path, artifact_path))

    class Client:
        def log_artifact(self, run_id, path, artifact_path=None):
            calls.append((run_id, path, artifact_path))

    fake.MlflowClient = Client
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    files = [tmp_path / "a.png", tmp_path / "a.pdf"]
    with pytest.raises(DplbenchError, match="no active MLflow run"):
        log_plots_to_mlflow(files)
    assert log_plots_to_mlflow(files, run_id="r1") == 2
    fake.active_run = lambda: object()
    assert log_plots_to_mlflow(files[:1]) == 1
    assert calls == [("r1", str(files[0]), "plots"), ("r1", str(files[1]), "plots"),
                     ("active", str(files[0]), "plots")]
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails -> nothing logged, no error
    assert log_plots_to_mlflow(files) == 0


def test_base_vs_novel_value_axis_is_zoomed_and_labels_fit(tmp_path):
    from matplotlib.image import imread

    from dplbench.report.plots import value_range

    assert value_range([81.5, 57.5, 67.4], [0.4, 0.4, 0.2]) == pytest.approx((57.1 - 2.48, 81.9 + 2.48))
    assert value_range([99.5, 98.0], [1.0, float("nan")]) == (97.0, 100.0)
    assert value_range([float("nan")], [float("nan")]) == (0.0, 100.0)
    records = [r for r in write_records(tmp_path, toy_b2n_records())]
    for r in records:  # a long variant label (of a complete row, drawn) must wrap inside the figure, as must the
        # line naming the incomplete rows that are left out (CoOp, DroPLe)
        r["unit"]["overrides"] = {"method.some_rather_long_option_name": 0.25} if r["unit"]["method"] == "zsclip" \
            else {}
    (png,) = make_plots(records, "base_novel", tmp_path / "plots", formats=("png",))
    pixels = imread(png)[..., :3]
    assert (pixels[:, :3] > 0.99).all() and (pixels[:, -3:] > 0.99).all(), "something is drawn over the edge"


# --- only complete values are drawn, and they are the table's numbers ----------------------------------------------
def _capture(monkeypatch) -> list:
    """The figures make_plots draws (nothing is written)."""
    from dplbench.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem, formats: figures.append(fig) or [])
    return figures


def _table(records, tmp_path, dataset="Average") -> dict:
    """{(row label, metric): mean} of the complete cells of ``dataset`` in the table's CSV."""
    path = build_tables(records, "base2novel", protocol="base2novel", out_dir=tmp_path, formats=("csv",),
                        n_boot=20)["csv"]
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return {(r["variant"], r["metric"]): float(r["mean"]) for r in rows
            if r["dataset"] == dataset and r["complete"] == "True"}


def test_base_vs_novel_draws_complete_values_only_and_they_are_the_table_numbers(tmp_path, monkeypatch):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer

    records = write_records(tmp_path / "runs", toy_b2n_records())  # CoOp: a failed seed; DroPLe: a missing one
    figures = _capture(monkeypatch)
    for dataset, drawn in ((None, ["CLIP"]), ("toy_shapes", ["CLIP", "CoOp"])):
        make_plots(records, "base_novel", tmp_path / "plots", dataset=dataset)
        (ax,) = figures.pop().axes
        assert [t.get_text() for t in ax.get_xticklabels()] == drawn
        left_out = [m for m in ("CoOp", "DroPLe") if m not in drawn]
        assert "not drawn, incomplete" in ax.get_title() and all(m in ax.get_title() for m in left_out)
        table = _table(records, tmp_path / "tables", dataset or "Average")
        base, novel = ([bar.get_height() for bar in c.patches] for c in ax.containers if isinstance(c, BarContainer))
        (hm,) = [c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)]
        assert base == pytest.approx([table[v, "base"] for v in drawn])
        assert novel == pytest.approx([table[v, "novel"] for v in drawn])
        assert list(hm) == pytest.approx([table[v, "hm"] for v in drawn])


def test_sweep_plots_leave_incomplete_averages_out_and_draw_the_table_numbers(tmp_path, monkeypatch):
    import numpy as np

    gap = {"method.iwtd.p_max": 0.3, "method.res.weight": 0.05}
    records = [r for r in sweep_records()  # one seed of one grid point never ran: its Average is incomplete
               if not (r["unit"]["overrides"] == gap and r["unit"]["dataset"] == "toy_glyphs"
                       and r["unit"]["seed"] == SEEDS[0])]
    records = write_records(tmp_path / "runs", records)
    table = _table(records, tmp_path / "tables")
    label = "DroPLe (iwtd.p_max=0.3, res.weight=0.05)"
    assert (label, "hm") not in table and len(table) == 3 * (len(P_MAX) * len(RES_WEIGHT) - 1 + 1)
    figures = _capture(monkeypatch)
    make_plots(records, "ablation", tmp_path / "plots", x="method.iwtd.p_max")
    (ax,) = figures.pop().axes
    drawn = {}
    for line in ax.get_lines():
        if not line.get_label().startswith("_"):  # the legend's lines: one per res.weight
            weight = float(line.get_label().split("res.weight=")[1].rstrip(")"))
            drawn.update({(float(x), weight): y for x, y in zip(line.get_xdata(), line.get_ydata())})
    expected = {(p, w): table[f"DroPLe (iwtd.p_max={p}, res.weight={w})", "hm"]
                for p in P_MAX for w in RES_WEIGHT if {"method.iwtd.p_max": p, "method.res.weight": w} != gap}
    assert drawn == pytest.approx(expected) and (0.3, 0.05) not in drawn
    assert label in ax.get_title()
    make_plots(records, "heatmap", tmp_path / "plots", x="method.res.weight", y="method.iwtd.p_max")
    grid = figures.pop().axes[0].images[0].get_array()
    for i, p in enumerate(P_MAX):
        for j, w in enumerate(RES_WEIGHT):
            if (p, w) == (0.3, 0.05):
                assert np.ma.is_masked(grid[i, j])
            else:
                assert grid[i, j] == pytest.approx(expected[p, w])
