"""Statistics wired into the product: sidecars from fabricated (and one real) result sets -> table intervals,
significance marks, CSV statistics columns, `dplbench compare`, the end-of-run lead line."""

from __future__ import annotations

import csv
import io
import time

import numpy as np
import pytest

from dplbench.predictions import SplitPredictions
from dplbench.report.aggregation import AVERAGE
from dplbench.report.reference import harmonic_mean
from dplbench.report.significance import STAT_COLUMNS, comparison_text, lead_line, table_statistics
from dplbench.report.tables import build_tables, render_terminal
from dplbench.results import ResultStore, config_hash

N_ITEMS = 400
METHODS = ("zsclip", "coop", "kgcoop", "promptsrc", "drople")
DATASETS = ("toy_shapes", "toy_glyphs", "toy_patterns")


def split(rng: np.random.Generator, accuracy: float, n: int = N_ITEMS, classes: int = 10,
          difficulty: np.ndarray | None = None) -> SplitPredictions:
    target = np.arange(n) % classes
    p = np.clip(accuracy + (0 if difficulty is None else difficulty), 0, 1)
    ok = rng.random(n) < p
    return SplitPredictions(np.arange(n), np.where(ok, target, (target + 1) % classes), target,
                            np.where(ok, 1.0, -1.0))


def write_unit(store: ResultStore, protocol: str, method: str, dataset: str, seed: int,
               splits: dict[str, SplitPredictions], metrics: dict[str, float], *, shots: int = 16,
               config: dict | None = None, extra: dict | None = None, sidecar: bool = True) -> None:
    config = {"protocol": protocol, "seeds": [1, 2, 3], **(config or {})}
    unit = {"protocol": protocol, "method": method, "dataset": dataset, "seed": seed, "shots": shots,
            "overrides": {}}
    chash = config_hash({"unit": unit, "config": config})
    record = {"status": "done", "error": None, "unit": unit, "config": config, "config_hash": chash,
              "metrics": metrics, "extra": extra or {}}
    if sidecar:
        record["predictions"] = store.write_predictions(unit, chash, splits)
    store.write(record)


def b2n_results(root, accuracies: dict[str, float], seeds=(1, 2, 3), sidecar=lambda m, d, s: True):
    """Fabricated base2novel units whose metrics are exactly what their sidecars say."""
    store = ResultStore(root)
    rng = np.random.default_rng(0)
    difficulty = {d: rng.normal(0, 0.15, N_ITEMS) for d in DATASETS}
    for method, acc in accuracies.items():
        for d in DATASETS:
            for seed in seeds:
                splits = {p: split(rng, acc, difficulty=difficulty[d]) for p in ("base", "novel")}
                b, n = splits["base"].accuracy, splits["novel"].accuracy
                write_unit(store, "base2novel", method, d, seed, splits,
                           {"base": b, "novel": n, "hm": harmonic_mean(b, n)},
                           config={"methods": list(accuracies), "datasets": list(DATASETS), "seeds": list(seeds)},
                           sidecar=sidecar(method, d, seed))
    return list(store.iter_records("base2novel"))


def csv_rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_45_unit_table_has_statistics_for_every_cell_and_is_fast(tmp_path):
    records = b2n_results(tmp_path, dict(zip(METHODS, (0.55, 0.60, 0.61, 0.62, 0.90))))
    assert len(records) == 45
    start = time.perf_counter()
    paths = build_tables(records, "base2novel", protocol="base2novel", out_dir=tmp_path / "tables", stats="ci")
    seconds = time.perf_counter() - start
    assert seconds < 10, f"45-unit table statistics took {seconds:.1f}s"
    rows = csv_rows(paths["csv"])
    assert len(rows) == 5 * (len(DATASETS) + 1) * 3
    for row in rows:
        assert set(STAT_COLUMNS) <= set(row)
        low, high, mean = float(row["ci_low"]), float(row["ci_high"]), float(row["mean"])
        assert low < mean < high, row
        assert row["ref"] == "DroPLe"
        if row["method"] != "drople":   # 28+ points below the best on 400 items x 3 seeds: significant
            assert float(row["diff_ci_high"]) < 0 and float(row["p_holm"]) < 0.05
    md = paths["md"].read_text()
    assert "[" in md and "Holm" in md
    assert "≈" not in md.split("\n\n")[1]   # no row is tied with DroPLe


def test_marks_appear_for_zero_difference_and_disappear_for_large_one(tmp_path):
    # coop and kgcoop: the same predictions as drople (difference exactly 0); zsclip far below
    records = b2n_results(tmp_path, {"zsclip": 0.5, "drople": 0.8})
    store = ResultStore(tmp_path)
    for record in list(records):
        if record["unit"]["method"] == "drople":
            splits = ResultStore.read_predictions(record)
            for method in ("coop", "kgcoop"):
                unit = dict(record["unit"], method=method)
                write_unit(store, "base2novel", method, unit["dataset"], unit["seed"], splits, record["metrics"],
                           config=record["config"])
    records = list(store.iter_records("base2novel"))
    text = render_terminal(records, "base2novel", protocol="base2novel")
    lines = {line.split()[1] if line.startswith(("Average", "toy_")) else line.split()[0]: line
             for line in text.splitlines() if "CLIP" in line or "CoOp" in line or "KgCoOp" in line
             or "DroPLe" in line}
    assert "≈" not in lines["CLIP"]
    tied = [name for name in ("CoOp", "KgCoOp", "DroPLe") if "≈" in lines[name]]
    assert len(tied) == 2   # two of the three identical rows are marked, the third is the reference
    assert "the lead is NOT significant" in lead_line(table_statistics(records, "base2novel"))
    stats_none = render_terminal(records, "base2novel", protocol="base2novel", stats="none")
    assert "≈" not in stats_none


def test_lead_line_says_significant_for_a_clear_winner(tmp_path):
    records = b2n_results(tmp_path, {"zsclip": 0.5, "coop": 0.6, "drople": 0.8})
    line = lead_line(table_statistics(records, "base2novel"))
    assert line.startswith("Significance: DroPLe leads on Average hm") and "is significant" in line


def test_missing_sidecar_leaves_those_cells_without_interval_and_says_so(tmp_path):
    records = b2n_results(tmp_path, {"zsclip": 0.6, "coop": 0.7},
                          sidecar=lambda m, d, s: not (m == "coop" and d == "toy_glyphs" and s == 2))
    paths = build_tables(records, "base2novel", protocol="base2novel", out_dir=tmp_path / "t", stats="ci")
    rows = csv_rows(paths["csv"])
    coop = {(r["dataset"], r["metric"]): r for r in rows if r["method"] == "coop"}
    assert coop["toy_glyphs", "base"]["ci_low"] == "" and coop[AVERAGE, "hm"]["ci_low"] == ""
    assert coop["toy_shapes", "base"]["ci_low"] != ""
    assert "coop/toy_glyphs/shots16/seed2" in paths["md"].read_text()
    # a corrupted sidecar is treated the same way
    some = next(r for r in records if r["unit"]["method"] == "zsclip")
    ResultStore.predictions_path(some["_path"]).write_bytes(b"garbage")
    stats = table_statistics(list(ResultStore(tmp_path).iter_records("base2novel")), "base2novel")
    assert any("checksum" in n for n in stats.notes)


def test_compare_prints_every_dataset_and_the_average(tmp_path):
    records = b2n_results(tmp_path, {"zsclip": 0.6, "coop": 0.7})
    stats = table_statistics(records, "base2novel")
    text = comparison_text(stats, "coop", "zsclip", records, protocol="base2novel")
    for d in DATASETS:
        assert sum(line.startswith(d) for line in text.splitlines()) == 3
    assert sum(line.startswith(AVERAGE) for line in text.splitlines()) == 3
    assert "a = CoOp, b = CLIP" in text and "*" in text


def test_compare_cli(tmp_path, capsys):
    from dplbench.cli import main

    b2n_results(tmp_path / "out", {"zsclip": 0.6, "coop": 0.7})
    assert main(["compare", "a=coop", "b=zsclip", f"run.output_dir={tmp_path / 'out'}"]) == 0
    assert "Average" in capsys.readouterr().out
    assert main(["compare", "a=coop", "b=maple", f"run.output_dir={tmp_path / 'out'}"]) == 2


def test_ten_seeds_tighten_the_interval(tmp_path):
    widths = {}
    for seeds in ((1, 2, 3), tuple(range(1, 11))):
        root = tmp_path / f"s{len(seeds)}"
        records = b2n_results(root, {"zsclip": 0.6, "coop": 0.7}, seeds=seeds)
        iv = table_statistics(records, "base2novel").interval("CoOp", (AVERAGE, "hm"))
        widths[len(seeds)] = iv.high - iv.low
    assert widths[10] < widths[3]


def other_layout_results(root):
    rng = np.random.default_rng(1)
    store = ResultStore(root)
    for method, acc in (("zsclip", 0.6), ("coop", 0.7)):
        for seed in (1, 2, 3):
            targets = ("toy_glyphs", "toy_patterns")
            splits = {f"acc/{t}": split(rng, acc) for t in ("toy_shapes", *targets)}
            write_unit(store, "cross_dataset", method, "toy_shapes", seed, splits,
                       {k: v.accuracy for k, v in splits.items()},
                       config={"source": "toy_shapes", "targets": list(targets)})
            for d in DATASETS:
                for shots in (1, 4):
                    s = {"acc": split(rng, acc + 0.02 * shots)}
                    write_unit(store, "few_shot", method, d, seed, s, {"acc": s["acc"].accuracy}, shots=shots,
                               config={"shots": [1, 4]})
            test = split(rng, acc, classes=6)
            buckets = {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
            write_unit(store, "long_tail_lift", method, "toy_shapes", seed, {"test": test},
                       {"overall": 0.0, "many": 0.0, "medium": 0.0, "few": 0.0}, shots=None,
                       extra={"class_buckets": buckets})
    return store


@pytest.mark.parametrize("protocol,layout", [("cross_dataset", "cross_dataset"), ("few_shot", "few_shot"),
                                             ("long_tail_lift", "long_tail")])
def test_other_layouts_have_statistics_for_every_cell(tmp_path, protocol, layout):
    store = other_layout_results(tmp_path)
    records = list(store.iter_records(protocol))
    paths = build_tables(records, layout, protocol=protocol, out_dir=tmp_path / "t", stats="ci")
    rows = csv_rows(paths["csv"])
    assert rows
    for row in rows:
        assert row["ci_low"] != "" and float(row["ci_low"]) <= float(row["ci_high"]), row
        assert row["ref"] in ("CLIP", "CoOp")
        assert row["diff"] != ""


def test_real_toy_run_writes_and_references_the_sidecar_and_resume_skips(tmp_path):
    from dplbench.config import build_config
    from dplbench.orchestrate import runner
    from dplbench.units import expand_units

    cfg = build_config(["method=zsclip", "dataset=toy_shapes", "seeds=[1]", "ray.enabled=false",
                        "tracking.enabled=false", f"run.output_dir={tmp_path}"])
    units = expand_units(cfg)
    summary = runner.run(cfg, units)
    assert summary.done == 1
    record = next(ResultStore(tmp_path).iter_records("base2novel"))
    ref = record["predictions"]
    sidecar = ResultStore.predictions_path(record["_path"])
    assert ref["file"] == sidecar.name and ref["bytes"] == sidecar.stat().st_size
    splits = ResultStore.read_predictions(record)
    assert set(splits) == {"base", "novel"}
    for part in ("base", "novel"):
        assert splits[part].accuracy == pytest.approx(record["metrics"][part])
        assert np.array_equal(splits[part].item_ids, np.arange(len(splits[part])))
        assert np.array_equal(splits[part].margin > 0, splits[part].correct)
    assert runner.run(cfg, units).skipped == 1
