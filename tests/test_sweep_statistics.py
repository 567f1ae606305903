"""Sweep statistics rebuilt from result files and sidecars: the summary's tie / worse verdicts, CI bands on
ablation plots and significance marks on heatmaps (fabricated results, no training)."""

from __future__ import annotations

import numpy as np
import pytest

from dplbench.orchestrate.sweep import SweepSummary, statistics_lines, sweep_statistics
from dplbench.report import plots
from dplbench.report.reference import harmonic_mean
from dplbench.results import ResultStore, config_hash
from test_significance import split

DATASETS = ("toy_shapes", "toy_glyphs")
SEEDS = (1, 2, 3)
N_BOOT = 400


def write_trial(store: ResultStore, method: str, overrides: dict, accuracy: float, *, sidecar: bool = True,
                same_as: dict | None = None) -> None:
    """One configuration on every dataset and seed; ``same_as`` copies another configuration's predictions
    (a difference of exactly 0)."""
    rng = np.random.default_rng(int(config_hash(overrides)[:8], 16))
    for dataset in DATASETS:
        difficulty = np.random.default_rng(len(dataset)).normal(0, 0.1, 400)
        for seed in SEEDS:
            splits = (same_as or {}).get((dataset, seed)) or \
                {p: split(rng, accuracy, difficulty=difficulty) for p in ("base", "novel")}
            b, n = splits["base"].accuracy, splits["novel"].accuracy
            unit = {"protocol": "base2novel", "method": method, "dataset": dataset, "seed": seed, "shots": 16,
                    "overrides": overrides}
            config = {"protocol": "base2novel", "seeds": list(SEEDS), "datasets": list(DATASETS)}
            chash = config_hash({"unit": unit, "config": config})
            record = {"status": "done", "error": None, "unit": unit, "config": config, "config_hash": chash,
                      "metrics": {"base": b, "novel": n, "hm": harmonic_mean(b, n)}, "extra": {}}
            if sidecar:
                record["predictions"] = store.write_predictions(unit, chash, splits)
            store.write(record)
            if same_as is not None:
                continue
            write_trial.splits[tuple(sorted(overrides.items())), dataset, seed] = splits


write_trial.splits = {}


def copied(overrides: dict) -> dict:
    key = tuple(sorted(overrides.items()))
    return {(d, s): write_trial.splits[key, d, s] for d in DATASETS for s in SEEDS}


def sweep_store(root, *, sidecar: bool = True) -> list[dict]:
    """DroPLe over n_ctx in {2, 4, 8}: 8 is the best, 4 has exactly 8's predictions, 2 is far below."""
    store = ResultStore(root)
    write_trial(store, "drople", {"method.n_ctx": 8}, 0.80, sidecar=sidecar)
    write_trial(store, "drople", {"method.n_ctx": 4}, 0.80, sidecar=sidecar, same_as=copied({"method.n_ctx": 8}))
    write_trial(store, "drople", {"method.n_ctx": 2}, 0.55, sidecar=sidecar)
    return list(store.iter_records("base2novel"))


TRIALS = [{"params": {"method.n_ctx": n}, "objective": None, "units": 6, "failed": 0} for n in (2, 4, 8)]


def trials_copy() -> list[dict]:
    return [dict(t, params=dict(t["params"])) for t in TRIALS]


def test_summary_marks_zero_difference_tied_and_large_difference_worse(tmp_path):
    records = sweep_store(tmp_path)
    trials = trials_copy()
    stats = sweep_statistics(records, trials, layout="base2novel", metric="hm", n_boot=N_BOOT)
    verdicts = {t["params"]["method.n_ctx"]: t["verdict"] for t in trials}
    assert verdicts[2] == "worse" and {verdicts[4], verdicts[8]} == {"best", "tied"}
    assert stats["cell"] == ["Average", "hm"]
    rows = {r["row"]: r for r in stats["rows"]}
    tied = next(r for r in rows.values() if r["verdict"] == "tied")
    assert tied["diff"] == 0.0 and tied["p_holm"] == 1.0
    worse = next(r for r in rows.values() if r["verdict"] == "worse")
    assert worse["diff_ci_high"] < 0 and worse["p_holm"] < 0.05
    best = rows[stats["best"]]
    assert best["ci_low"] < best["value"] < best["ci_high"]
    text = str(SweepSummary("n_ctx", "grid", "hm", "max", None, None, None, trials=trials, statistics=stats))
    assert "not distinguishable from the best:" in text and "significantly worse:" in text
    assert "[worse]" in text and "[≈ best]" in text and "Holm over the 2 other row(s)" in text
    assert f"{best['value']:.2f} [{best['ci_low']:.2f}, {best['ci_high']:.2f}]" in text


def test_summary_without_sidecars_says_so(tmp_path):
    trials = trials_copy()
    stats = sweep_statistics(sweep_store(tmp_path, sidecar=False), trials, layout="base2novel", metric="hm",
                             n_boot=N_BOOT)
    assert stats["best"] is None and {t["verdict"] for t in trials} == {"n/a"}
    assert statistics_lines(stats)[0].startswith("significance: not assessed (no interval anywhere")


class Captured:
    """Replaces ``plots._save``: keeps the figures instead of writing files."""

    def __init__(self):
        self.figures = []

    def __call__(self, fig, out_dir, stem, formats):
        self.figures.append(fig)
        return []


def _bands(ax):
    from matplotlib.collections import PolyCollection

    return [c for c in ax.collections if isinstance(c, PolyCollection)]


@pytest.mark.parametrize("sidecar", [True, False])
def test_ablation_draws_bootstrap_bands_only_with_sidecars(tmp_path, monkeypatch, sidecar):
    records = sweep_store(tmp_path, sidecar=sidecar)
    capture = Captured()
    monkeypatch.setattr(plots, "_save", capture)
    plots.make_plots(records, "ablation", tmp_path / "plots", n_boot=N_BOOT)
    (ax,) = capture.figures[0].axes
    bands = _bands(ax)
    if sidecar:
        assert len(bands) == 1
        ys = ax.lines[0].get_ydata()
        lows, highs = bands[0].get_paths()[0].vertices[:, 1].min(), bands[0].get_paths()[0].vertices[:, 1].max()
        assert lows < min(ys) and highs > max(ys)
        assert "95 % CI" in ax.get_title()
    else:
        assert bands == []
        assert "no interval" in ax.get_title()


def test_heatmap_marks_cells_not_significantly_below_the_best(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    write_trial(store, "drople", {"method.n_ctx": 8, "train.lr": 0.1}, 0.80)
    write_trial(store, "drople", {"method.n_ctx": 4, "train.lr": 0.1}, 0.80,
                same_as=copied({"method.n_ctx": 8, "train.lr": 0.1}))
    write_trial(store, "drople", {"method.n_ctx": 8, "train.lr": 0.01}, 0.55)
    write_trial(store, "drople", {"method.n_ctx": 4, "train.lr": 0.01}, 0.50)
    records = list(store.iter_records("base2novel"))
    capture = Captured()
    monkeypatch.setattr(plots, "_save", capture)
    plots.make_plots(records, "heatmap", tmp_path / "plots", x="method.n_ctx", y="train.lr", n_boot=N_BOOT)
    ax = capture.figures[0].axes[0]
    marked = {(round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in ax.patches if p.get_hatch()}
    # x index: n_ctx 4 -> 0, 8 -> 1; y index: lr 0.01 -> 0, 0.1 -> 1
    assert marked == {(0, 1), (1, 1)}
    assert any("Holm" in t.get_text() for t in ax.get_legend().get_texts())
    # without sidecars: no marks, and the legend says why
    capture.figures.clear()
    for record in records:
        ResultStore.predictions_path(record["_path"]).unlink()
    plots.make_plots(list(store.iter_records("base2novel")), "heatmap", tmp_path / "p2", x="method.n_ctx",
                     y="train.lr", n_boot=N_BOOT)
    ax = capture.figures[0].axes[0]
    assert not [p for p in ax.patches if p.get_hatch()]
    assert "no significance marks" in capture.figures[0].get_suptitle() or \
        any("no significance" in t.get_text() for t in ax.texts)


def predicting_execute(unit, runtime, on_epoch=None):
    """n_ctx 4 and 8 predict identically (per dataset and seed); n_ctx 2 is far worse."""
    rng = np.random.default_rng([unit.seed, len(unit.dataset), 2 if unit.options.get("n_ctx") == 2 else 0])
    accuracy = 0.5 if unit.options.get("n_ctx") == 2 else 0.8
    splits = {p: split(rng, accuracy) for p in ("base", "novel")}
    b, n = splits["base"].accuracy, splits["novel"].accuracy
    return {"metrics": {"base": b, "novel": n, "hm": harmonic_mean(b, n)}, "history": [], "faithfulness": {},
            "extra": {}, "predictions": splits}


def test_run_sweep_summary_rebuilds_statistics_from_the_store(tmp_path):
    import json
    from pathlib import Path

    from dplbench.config import build_config
    from dplbench.orchestrate.sweep import run_sweep

    cfg = build_config(["method=coop", "dataset=toy_shapes_noisy", "seeds=[1,2,3]", f"run.output_dir={tmp_path}",
                        "sweep.params.method.n_ctx=[2,4,8]", "ray.enabled=false", "tracking.enabled=false",
                        f"report.n_boot={N_BOOT}"])
    summary = run_sweep(cfg, executor=predicting_execute)
    assert {t["params"]["method.n_ctx"]: t["verdict"] for t in summary.trials}[2] == "worse"
    assert sorted(t["verdict"] for t in summary.trials if t["params"]["method.n_ctx"] != 2) == ["best", "tied"]
    text = str(summary)
    assert "significance on Average hm" in text and "significantly worse:" in text
    saved = json.loads(Path(summary.summary_path).read_text())
    assert saved["statistics"]["best"] in ("CoOp (n_ctx=4)", "CoOp (n_ctx=8)")
    assert [t["verdict"] for t in saved["trials"]] == [t["verdict"] for t in summary.trials]
