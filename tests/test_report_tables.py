"""Tables rebuilt from result files: aggregation rules, golden Markdown/LaTeX/CSV/text, reference numbers.

Golden files live in tests/golden/; regenerate them deliberately with DPLBENCH_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from dplbench.errors import DplbenchError, UnknownNameError
from dplbench.report import aggregate, build_tables, load_reference, render_terminal, tables_from_results
from dplbench.report.reference import ReferenceError, harmonic_mean
from dplbench.report.tables import tex_escape
from dplbench.results import ResultStore, config_hash

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("DPLBENCH_UPDATE_GOLDEN") == "1"
SEEDS = [1, 2, 3]
NOISE = {1: -0.3, 2: 0.0, 3: 0.3}          # per-seed offsets: seed means equal the base value exactly
B2N_STANDARD = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
DG_TOY_TARGETS = ["toy_shapes_sketch", "toy_shapes_noise", "toy_shapes_lowcontrast", "toy_shapes_outline"]


# --- fixtures: small result trees written through the real ResultStore ----------------------------------------------
def make_record(protocol, method, dataset, seed, metrics, *, shots=16, status="done", error=None, overrides=None,
                config=None):
    config = {"protocol": protocol, "seeds": SEEDS, **(config or {})}
    unit = {"protocol": protocol, "method": method, "dataset": dataset, "seed": seed, "shots": shots,
            "overrides": overrides or {}}
    return {"status": status, "error": error, "unit": unit, "config": config,
            "config_hash": config_hash({"unit": unit, "config": config}),
            "metrics": metrics if status == "done" else {}}


def write_records(root: Path, records) -> list[dict]:
    store = ResultStore(root)
    for record in records:
        store.write(record)
    return list(store.iter_records())


def b2n(base, novel, seed):
    b, n = base + NOISE[seed], novel - NOISE[seed]
    return {"base": b, "novel": n, "hm": harmonic_mean(b, n)}


def toy_b2n_records():
    cfg = {"methods": ["zsclip", "coop", "drople"], "datasets": ["toy_shapes", "toy_glyphs"]}
    values = {("zsclip", "toy_shapes"): (70.0, 68.0), ("zsclip", "toy_glyphs"): (60.0, 62.0),
              ("coop", "toy_shapes"): (85.0, 60.0), ("coop", "toy_glyphs"): (78.0, 55.0),
              ("drople", "toy_shapes"): (84.0, 70.0), ("drople", "toy_glyphs"): (79.0, 64.0)}
    out = []
    for (method, dataset), (b, n) in values.items():
        for seed in SEEDS:
            if (method, dataset, seed) == ("coop", "toy_glyphs", 2):
                out.append(make_record("base2novel", method, dataset, seed, {}, status="failed",
                                       error="RuntimeError: CUDA out of memory", config=cfg))
            elif (method, dataset, seed) == ("drople", "toy_shapes", 3):
                continue  # never ran: a missing seed
            else:
                out.append(make_record("base2novel", method, dataset, seed, b2n(b, n, seed), config=cfg))
    return out


def standard_b2n_records():
    """zsclip and coop at exactly the published per-dataset numbers (± seed noise); drople at other values."""
    ref = load_reference()
    cfg = {"methods": ["zsclip", "coop", "drople"], "datasets": B2N_STANDARD, "suite": "standard"}
    out = []
    for method, name in (("zsclip", "CLIP"), ("coop", "CoOp"), ("drople", None)):
        for i, dataset in enumerate(B2N_STANDARD):
            from dplbench.report.reference import dataset_display
            if name:
                b = ref.get("base2novel", name, dataset_display(dataset), "base").value
                n = ref.get("base2novel", name, dataset_display(dataset), "novel").value
            else:
                b, n = 80.0 + i, 70.0 + i / 2
            for seed in SEEDS:
                out.append(make_record("base2novel", method, dataset, seed, b2n(b, n, seed), config=cfg))
    return out


def cross_dataset_records():
    targets = ["caltech101", "dtd", "eurosat"]
    cfg = {"methods": ["zsclip", "coop"], "source": "imagenet", "targets": targets}
    base = {"zsclip": {"imagenet": 66.7, "caltech101": 92.9, "dtd": 44.4, "eurosat": 47.6},
            "coop": {"imagenet": 71.5, "caltech101": 93.7, "dtd": 41.9, "eurosat": 46.4}}
    out = []
    for method, accs in base.items():
        for seed in SEEDS:
            if (method, seed) == ("coop", 3):
                out.append(make_record("cross_dataset", method, "imagenet", seed, {}, status="failed",
                                       error="ValueError: NaN loss at epoch 2", config=cfg))
                continue
            metrics = {f"acc/{d}": v + NOISE[seed] * (1 + j) for j, (d, v) in enumerate(accs.items())}
            out.append(make_record("cross_dataset", method, "imagenet", seed, metrics, config=cfg))
    return out


def dg_toy_records():
    cfg = {"methods": ["zsclip", "kgcoop"], "source": "toy_shapes", "targets": DG_TOY_TARGETS}
    out = []
    for m, (method, level) in enumerate((("zsclip", 60.0), ("kgcoop", 66.0))):
        for seed in SEEDS:
            if (method, seed) == ("kgcoop", 2):
                continue  # missing seed
            metrics = {"acc/toy_shapes": level + 10 + NOISE[seed]}
            metrics.update({f"acc/{t}": level - 5 * j + NOISE[seed] * (m + 1) for j, t in enumerate(DG_TOY_TARGETS)})
            out.append(make_record("domain_generalization", method, "toy_shapes", seed, metrics, config=cfg))
    return out


def few_shot_records():
    cfg = {"methods": ["coop", "kgcoop"], "datasets": ["toy_shapes", "toy_glyphs"], "shots": [1, 2, 4]}
    out = []
    for method, gain in (("coop", 0.0), ("kgcoop", 1.5)):
        for d, dataset in enumerate(("toy_shapes", "toy_glyphs")):
            for k in (1, 2, 4):
                for seed in SEEDS:
                    if (method, dataset, k, seed) == ("kgcoop", "toy_glyphs", 4, 1):
                        out.append(make_record("few_shot", method, dataset, seed, {}, shots=k, status="failed",
                                               error="DataNotFoundError: split file missing", config=cfg))
                        continue
                    acc = 50 + 8 * math.log2(k) + gain - 5 * d + NOISE[seed]
                    out.append(make_record("few_shot", method, dataset, seed, {"acc": acc}, shots=k, config=cfg))
    return out


def long_tail_records():
    cfg = {"methods": ["zsclip", "promptsrc"], "datasets": ["imagenet_lt", "places_lt"]}
    out = []
    for method, gain in (("zsclip", 0.0), ("promptsrc", 6.0)):
        for dataset, level in (("imagenet_lt", 70.0), ("places_lt", 40.0)):
            for seed in SEEDS:
                if (method, dataset, seed) == ("promptsrc", "places_lt", 1):
                    continue
                m = {"many": level + gain + 5, "medium": level + gain, "few": level + gain - 8}
                m = {k: v + NOISE[seed] for k, v in m.items()}
                m["overall"] = (m["many"] + m["medium"] + m["few"]) / 3
                out.append(make_record("long_tail_lift", method, dataset, seed, m, shots=None, config=cfg))
    return out


CASES = {
    # name: (records factory, layout, protocol)
    "base2novel_toy": (toy_b2n_records, "base2novel", "base2novel"),
    "base2novel_standard": (standard_b2n_records, "base2novel", "base2novel"),
    "cross_dataset": (cross_dataset_records, "cross_dataset", "cross_dataset"),
    "domain_generalization_toy": (dg_toy_records, "domain_generalization", "domain_generalization"),
    "few_shot": (few_shot_records, "few_shot", "few_shot"),
    "long_tail": (long_tail_records, "long_tail", "long_tail_lift"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every case written to its own result tree and rebuilt into tables once for the module."""
    out = {}
    for name, (factory, layout, protocol) in CASES.items():
        root = tmp_path_factory.mktemp(name)
        records = write_records(root, factory())
        paths = build_tables(records, layout, protocol=protocol, out_dir=root / "tables")
        out[name] = {"records": records, "layout": layout, "protocol": protocol, "paths": paths, "root": root}
    return out


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with DPLBENCH_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


# --- golden files ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt", ["md", "tex", "csv"])
def test_golden_tables(built, case, fmt):
    info = built[case]
    path = info["paths"][fmt]
    assert path == info["root"] / "tables" / f"{info['protocol']}.{fmt}"
    _check_golden(f"{case}.{fmt}", path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", ["base2novel_toy", "cross_dataset"])
def test_golden_terminal(built, case):
    info = built[case]
    _check_golden(f"{case}.txt", render_terminal(info["records"], info["layout"], protocol=info["protocol"]))


# --- aggregation rules ----------------------------------------------------------------------------------------------
def _row(frame, **where):
    sel = frame
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, where
    return sel.iloc[0]


def test_hm_is_computed_from_seed_means_and_std_is_sample_std(built):
    frame = aggregate(built["base2novel_toy"]["records"], "base2novel")
    base = _row(frame, variant="CLIP", dataset="toy_shapes", metric="base")
    novel = _row(frame, variant="CLIP", dataset="toy_shapes", metric="novel")
    hm = _row(frame, variant="CLIP", dataset="toy_shapes", metric="hm")
    assert base["mean"] == pytest.approx(70.0) and novel["mean"] == pytest.approx(68.0)
    assert base["std"] == pytest.approx(statistics.stdev([69.7, 70.0, 70.3]))  # ddof=1: 0.3
    assert hm["mean"] == pytest.approx(harmonic_mean(70.0, 68.0))
    per_seed = [harmonic_mean(70 + o, 68 - o) for o in NOISE.values()]
    assert hm["mean"] != pytest.approx(statistics.mean(per_seed), abs=1e-6)  # not the mean of per-seed HMs
    assert hm["values"] == pytest.approx(tuple(per_seed))
    assert hm["rule"] == "hm_of_seed_means"


def test_average_hm_is_hm_of_averaged_base_and_novel(built):
    frame = aggregate(built["base2novel_toy"]["records"], "base2novel")
    avg = {m: _row(frame, variant="CLIP", dataset="Average", metric=m)["mean"] for m in ("base", "novel", "hm")}
    assert avg["base"] == pytest.approx(65.0) and avg["novel"] == pytest.approx(65.0)
    assert avg["hm"] == pytest.approx(65.0)
    per_dataset = [harmonic_mean(70, 68), harmonic_mean(60, 62)]
    assert avg["hm"] != pytest.approx(statistics.mean(per_dataset), abs=1e-4)


def test_average_rule_reproduces_published_coop_average(built):
    """CoOp at the published per-dataset numbers: Average HM = HM(82.69, 63.22) = 71.66, not 70.83."""
    frame = aggregate(built["base2novel_standard"]["records"], "base2novel")
    avg = {m: _row(frame, variant="CoOp", dataset="Average", metric=m)["mean"] for m in ("base", "novel", "hm")}
    assert avg["base"] == pytest.approx(82.69, abs=0.01)
    assert avg["novel"] == pytest.approx(63.22, abs=0.01)
    assert avg["hm"] == pytest.approx(71.66, abs=0.01)
    per_dataset_hms = frame[(frame.variant == "CoOp") & (frame.metric == "hm") & (frame.dataset != "Average")]
    assert len(per_dataset_hms) == 11
    assert per_dataset_hms["mean"].mean() == pytest.approx(70.83, abs=0.01)


def test_missing_and_failed_seeds_are_flagged_not_averaged_away(built):
    frame = aggregate(built["base2novel_toy"]["records"], "base2novel")
    failed = _row(frame, variant="CoOp", dataset="toy_glyphs", metric="base")
    assert (failed["n_seeds"], failed["expected_seeds"], failed["complete"]) == (2, 3, False)
    assert failed["failed_seeds"] == ((2, "RuntimeError: CUDA out of memory"),)
    assert any("coop/toy_glyphs/shots16/seed2 failed: RuntimeError: CUDA out of memory" in n for n in failed["notes"])
    missing = _row(frame, variant="DroPLe", dataset="toy_shapes", metric="novel")
    assert missing["missing_seeds"] == (3,) and missing["n_seeds"] == 2 and not missing["complete"]
    avg = _row(frame, variant="CoOp", dataset="Average", metric="hm")
    assert not avg["complete"] and avg["seeds"] == (1, 3)  # per-seed averages only where every dataset has the seed
    md = built["base2novel_toy"]["paths"]["md"].read_text()
    assert "(2/3)†" in md and "† CoOp / toy_glyphs: unit coop/toy_glyphs/shots16/seed2 failed" in md
    assert "† DroPLe / toy_shapes: no result file for seed 3" in md


def test_cell_without_successful_seed_shows_dash(tmp_path):
    records = write_records(tmp_path, [
        make_record("base2novel", "coop", "toy_a", s, b2n(80, 70, s)) for s in SEEDS] + [
        make_record("base2novel", "kgcoop", "toy_a", s, {}, status="failed", error="boom") for s in SEEDS])
    text = render_terminal(records, "base2novel")
    rows = [line for line in text.splitlines() if "KgCoOp" in line and not line.startswith("†")]
    average, toy_a = [line.split("KgCoOp", 1)[1].split() for line in rows]
    assert toy_a == ["—†"] * 3  # no successful seed, failed units: dash with the footnote marker
    assert average == ["—"] * 3
    assert "† KgCoOp / toy_a: unit kgcoop/toy_a/shots16/seed1 failed: boom" in text
    frame = aggregate(records, "base2novel")
    assert math.isnan(_row(frame, variant="KgCoOp", dataset="toy_a", metric="hm")["mean"])


def test_transfer_average_excludes_source_and_targets_come_from_config(built):
    frame = aggregate(built["domain_generalization_toy"]["records"], "domain_generalization")
    zs = frame[frame.variant == "CLIP"]
    assert list(zs.dataset) == ["toy_shapes", "Average", *DG_TOY_TARGETS]
    assert _row(zs, dataset="toy_shapes")["role"] == "source"
    assert _row(zs, dataset="Average")["mean"] == pytest.approx(60 - 5 * 1.5)  # mean of 60, 55, 50, 45
    frame = aggregate(built["cross_dataset"]["records"], "cross_dataset")
    coop_avg = _row(frame, variant="CoOp", dataset="Average")
    # seeds 1 and 2 (seed 3 failed); target j carries a seed offset of NOISE * (j + 1), ImageNet excluded
    expected = statistics.mean([93.7 - 0.15 * 2, 41.9 - 0.15 * 3, 46.4 - 0.15 * 4])
    assert coop_avg["mean"] == pytest.approx(expected)
    assert coop_avg["n_seeds"] == 2 and not coop_avg["complete"]


def test_transfer_targets_default_to_metric_keys(tmp_path):
    records = write_records(tmp_path, [
        make_record("cross_dataset", "coop", "src", s, {"acc/src": 70.0 + s, "acc/t1": 50.0 + s, "acc/t2": 40.0})
        for s in SEEDS])
    frame = aggregate(records, "cross_dataset")
    assert list(frame.dataset) == ["src", "Average", "t1", "t2"]
    assert _row(frame, dataset="Average")["mean"] == pytest.approx(46.0)


def test_few_shot_average_per_shot_count(built):
    frame = aggregate(built["few_shot"]["records"], "few_shot")
    avg = _row(frame, variant="CoOp", dataset="Average", shots=4)
    assert avg["mean"] == pytest.approx((66 + 61) / 2)
    kg = _row(frame, variant="KgCoOp", dataset="toy_glyphs", shots=4)
    assert kg["n_seeds"] == 2 and kg["failed_seeds"][0][0] == 1


def test_round_per_seed_emulates_reference_evaluator(tmp_path):
    records = write_records(tmp_path, [make_record("few_shot", "coop", "d", s, {"acc": 70.04 + s / 100})
                                       for s in SEEDS])
    exact = _row(aggregate(records, "few_shot"), dataset="d")["mean"]
    rounded = _row(aggregate(records, "few_shot", round_per_seed=1), dataset="d")["mean"]
    assert exact == pytest.approx(70.06) and rounded == pytest.approx(70.1)


def test_sweep_overrides_make_separate_rows(tmp_path):
    records = write_records(tmp_path, [
        make_record("base2novel", "drople", "toy_a", s, b2n(80 + p * 10, 70, s), overrides={"method.iwtd.p_max": p})
        for p in (0.1, 0.5) for s in SEEDS])
    frame = aggregate(records, "base2novel")
    assert set(frame.variant) == {"DroPLe (iwtd.p_max=0.1)", "DroPLe (iwtd.p_max=0.5)"}


def test_layout_aliases_and_errors(tmp_path):
    records = write_records(tmp_path, [make_record("long_tail_b2n_drople", "coop", "dtd", s, b2n(80, 70, s))
                                       for s in SEEDS])
    assert set(aggregate(records, "long_tail_b2n").metric) == {"base", "novel", "hm"}
    with pytest.raises(UnknownNameError, match="valid choices|Valid choices"):
        aggregate(records, "base_to_novel")
    with pytest.raises(DplbenchError, match="no result records for protocol 'base2novel'"):
        build_tables(records, "base2novel", protocol="base2novel", out_dir=tmp_path)
    with pytest.raises(UnknownNameError):
        build_tables(records, "base2novel", protocol="long_tail_b2n_drople", out_dir=tmp_path, formats=("html",))


def test_tables_from_results_reads_the_store(tmp_path):
    write_records(tmp_path, toy_b2n_records())
    paths = tables_from_results(tmp_path, "base2novel", "base2novel", formats=("md",))
    assert paths == {"md": tmp_path / "tables" / "base2novel.md"}
    assert paths["md"].read_text() == (GOLDEN / "base2novel_toy.md").read_text()
    with pytest.raises(DplbenchError, match="no result files"):
        tables_from_results(tmp_path, "few_shot", "few_shot")


# --- reference numbers ------------------------------------------------------------------------------------------
def test_reference_csv_is_a_copy_of_the_spec_and_passes_every_rule():
    spec = Path("/work/shared/specs/reference_numbers.csv")
    ref = load_reference()  # raises if a verified row breaks a rule
    if spec.exists():
        assert ref.path.read_text() == spec.read_text()
    assert len(ref.rows) == 346
    assert ref.check(tolerance=0.01) == []  # all rows, verified or not


def test_reference_coop_average_rule():
    ref = load_reference()
    get = lambda d, m: ref.get("base2novel", "CoOp", d, m).value  # noqa: E731
    assert harmonic_mean(get("Average", "base"), get("Average", "novel")) == pytest.approx(71.66, abs=0.005)
    assert get("Average", "hm") == 71.66
    from dplbench.report.reference import B2N_DATASETS
    per_dataset = [get(d, "hm") for d in B2N_DATASETS]
    assert statistics.mean(per_dataset) == pytest.approx(70.83, abs=0.005)
    assert statistics.mean(get(d, "base") for d in B2N_DATASETS) == pytest.approx(82.69, abs=0.01)


def test_reference_check_catches_broken_rows(tmp_path):
    text = load_reference().path.read_text()
    bad_hm = tmp_path / "bad_hm.csv"
    bad_hm.write_text(text.replace("base2novel,CoOp,Average,hm,71.66", "base2novel,CoOp,Average,hm,70.83"))
    with pytest.raises(ReferenceError, match="CoOp/Average: HM"):
        load_reference(bad_hm)
    bad_avg = tmp_path / "bad_avg.csv"
    line = next(x for x in text.splitlines() if x.startswith("cross_dataset,MaPLe,Average"))
    bad_avg.write_text(text.replace(line, line.replace(",66.30,", ",67.30,")))
    assert ",67.30," in bad_avg.read_text()
    with pytest.raises(ReferenceError, match="mean of 10 top1 rows"):
        load_reference(bad_avg)
    unverified = bad_avg.read_text().replace(line.replace(",66.30,", ",67.30,"),
                                             line.replace(",66.30,", ",67.30,").replace(",yes", ",no"))
    bad_avg.write_text(unverified)
    assert len(load_reference(bad_avg).check()) == 1  # unverified: reported, not fatal
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("a,b\n1,2\n")
    with pytest.raises(ReferenceError, match="expected columns"):
        load_reference(garbage)


def test_published_rows_and_difference_in_standard_table(built):
    md = built["base2novel_standard"]["paths"]["md"].read_text()
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if "| CoOp " in line)
    assert "CoOp (paper)" in lines[i + 1] and "82.69" in lines[i + 1] and "71.66" in lines[i + 1]
    assert "Δ vs paper" in lines[i + 2] and lines[i + 2].count(" 0.00 ") == 3
    assert "71.66 ± " in lines[i]
    # the generic drople gets no published row and no difference, and the note says why
    assert "DroPLe (paper)" not in md
    assert "not the DroPLe paper's LLaMP-based model" in md
    csv_rows = list(csv.DictReader(io.StringIO(built["base2novel_standard"]["paths"]["csv"].read_text())))
    drople = [r for r in csv_rows if r["method"] == "drople"]
    assert drople and all(r["published"] == "" for r in drople)
    coop_avg_hm = next(r for r in csv_rows
                       if r["method"] == "coop" and r["dataset"] == "Average" and r["metric"] == "hm")
    assert float(coop_avg_hm["published"]) == 71.66 and abs(float(coop_avg_hm["published_diff"])) < 0.01


def test_partial_target_set_is_not_compared_with_published_average(built):
    md = built["cross_dataset"]["paths"]["md"].read_text()
    paper = next(line for line in md.splitlines() if "CoOp (paper)" in line)
    cells = [c.strip() for c in paper.strip("|").split("|")]
    assert cells[1:5] == ["71.51", "93.70", "41.92", "46.39"] and cells[5] == "—"
    toy = built["base2novel_toy"]["paths"]["md"].read_text()
    assert "(paper)" not in toy


# --- CSV and LaTeX structure ------------------------------------------------------------------------------------
def test_csv_is_tidy_with_per_seed_values(built):
    rows = list(csv.DictReader(io.StringIO(built["base2novel_toy"]["paths"]["csv"].read_text())))
    assert len(rows) == 3 * 3 * 3  # variants x (Average + 2 datasets) x metrics
    for column in ("method", "dataset", "metric", "mean", "std", "n_seeds", "expected_seeds", "seed_1", "seed_2",
                   "seed_3"):
        assert column in rows[0]
    r = next(r for r in rows if r["method"] == "coop" and r["dataset"] == "toy_glyphs" and r["metric"] == "base")
    assert (r["n_seeds"], r["expected_seeds"], r["seed_2"], r["failed_seeds"]) == ("2", "3", "", "2")
    assert float(r["seed_1"]) == pytest.approx(77.7)
    assert float(r["std"]) == pytest.approx(statistics.stdev([77.7, 78.3]))


def _tabular_body(tex: str) -> list[str]:
    body = tex.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}", 1)[0]
    return [line for line in body.splitlines()[1:] if line.endswith(r"\\")]


def _n_columns(line: str) -> int:
    line = line.replace(r"\&", "")
    spans = sum(int(k) - 1 for k in re.findall(r"\\multicolumn\{(\d+)\}", line))
    return line.count("&") + 1 + spans


def _braces_balanced(tex: str) -> bool:
    depth = 0
    for token in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(token, 0)
        if depth < 0:
            return False
    return depth == 0


@pytest.mark.parametrize("case", list(CASES))
def test_latex_structure(built, case):
    tex = built[case]["paths"]["tex"].read_text()
    assert _braces_balanced(tex)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex).group(1)
    rows = _tabular_body(tex)
    assert rows and all(_n_columns(r) == len(spec) for r in rows), case
    assert "$\\pm$" in tex and "±" not in tex and "_" not in tex.replace("\\_", "").split(r"\label")[0]
    assert all(ord(ch) < 128 for ch in tex)


@pytest.mark.parametrize("case", ["base2novel_toy", "few_shot", "long_tail"])
def test_latex_bold_marks_best_measured_value_per_block_column(built, case):
    tex = built[case]["paths"]["tex"].read_text()
    blocks = "\n".join(_tabular_body(tex)).split(r"\multicolumn")
    checked = 0
    for block in blocks:
        rows = [r for r in block.splitlines() if r.endswith(r"\\") and not r.startswith((r"\quad", "{"))
                and "&" in r and not r.startswith("Method")]
        cells = [r[:-2].split("&")[1:] for r in rows]
        for j in range(len(cells[0]) if cells else 0):
            values = [(float(m.group(1)), r"\textbf" in c[j]) for c in cells
                      if (m := re.search(r"(\d+\.\d+)", c[j]))]
            if len(values) < 2:
                continue
            best = max(v for v, _ in values)
            assert [bold for v, bold in values] == [v == best for v, _ in values]
            checked += 1
    assert checked > 0


def test_tex_escape():
    assert tex_escape("toy_a 50% & {x} #1 $") == r"toy\_a 50\% \& \{x\} \#1 \$"
    assert tex_escape("71.2 ± 0.4†") == r"71.2 $\pm$ 0.4$^\dagger$"
    assert tex_escape("naïve 中") == "naive ?"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_latex_compiles(built, case, tmp_path):
    table = built[case]["paths"]["tex"].read_text()
    doc = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + table + "\\end{document}\n"
    (tmp_path / "doc.tex").write_text(doc)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_report_import_is_cheap():
    code = ("import sys, dplbench.report as r; r.__doc__; "
            "print(sorted(m for m in ('pandas', 'matplotlib', 'torch', 'mlflow') if m in sys.modules))")
    repo = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    assert out.stdout.strip() == "[]"


def test_only_default_16_shot_runs_get_published_rows(tmp_path):
    records = write_records(tmp_path, [
        make_record("base2novel", "coop", "dtd", s, b2n(79.44, 41.18, s), shots=shots, overrides=overrides)
        for shots, overrides in ((16, None), (16, {"method.n_ctx": 16}), (8, None)) for s in SEEDS])
    lines = render_terminal(records, "base2novel").splitlines()
    paper = [i for i, line in enumerate(lines) if "CoOp (paper)" in line]
    # DTD block only (a one-dataset Average is not the published 11-dataset Average), default 16-shot run only
    assert len(paper) == 1 and lines[paper[0] - 1].split()[:3] == ["CoOp", "16", "—"]  # knobs: shots, n_ctx
    assert lines.index(next(line for line in lines if line.startswith("DTD"))) < paper[0]
    assert "79.44" in lines[paper[0]] and "Δ vs paper" in lines[paper[0] + 1]
    frame = aggregate(records, "base2novel")
    assert set(frame.variant) == {"CoOp [16-shot]", "CoOp (n_ctx=16) [16-shot]", "CoOp [8-shot]"}


def test_datasets_follow_the_protocol_order_in_every_style(tmp_path):
    """Real result files carry no dataset list: the order is the protocol YAML's, not alphabetical."""
    from dplbench.catalog import PROTOCOLS

    protocol_order = list(PROTOCOLS.get("base2novel").suites["toy"]["datasets"])
    assert sorted(protocol_order) != protocol_order
    records = write_records(tmp_path / "runs", [
        make_record("base2novel", "coop", d, s, b2n(80.0, 60.0, s), config={"seeds": SEEDS})
        for d in sorted(protocol_order) for s in SEEDS])
    frame = aggregate(records, "base2novel")
    assert list(dict.fromkeys(frame.loc[frame.role == "dataset", "dataset"])) == protocol_order
    paper_names = [name.removeprefix("toy_").replace("_", " ").title() for name in protocol_order]
    for style, names in (("default", protocol_order), ("paper", [f"Toy {name}" for name in paper_names])):
        paths = build_tables(records, "base2novel", protocol="base2novel", out_dir=tmp_path / "tables",
                             style=style, n_boot=20)
        for fmt in ("md", "tex"):
            text = paths[fmt].read_text()
            found = [text.index(n if fmt == "md" else tex_escape(n)) for n in names]
            assert found == sorted(found), (style, fmt)
        csv_rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
        assert list(dict.fromkeys(r["dataset"] for r in csv_rows if r["role"] == "dataset")) == protocol_order


def test_sweep_tables_put_each_swept_knob_in_its_own_column(tmp_path):
    """Knob values are columns, not folded into the method label; a setting every row shares is one note."""
    backbone = {"backbone.name": "ViT-B-16"}
    records = write_records(tmp_path / "runs", [
        make_record("base2novel", "drople", d, s, b2n(80 + 10 * p, 60 + 100 * w, s),
                    overrides={**backbone, "method.dropout_rate": p, "method.res.weight": w})
        for p in (0.1, 0.3) for w in (0.0, 0.05) for d in ("toy_shapes", "toy_glyphs") for s in SEEDS] + [
        make_record("base2novel", "coop", d, s, b2n(82, 60, s), overrides=backbone)
        for d in ("toy_shapes", "toy_glyphs") for s in SEEDS])
    paths = build_tables(records, "base2novel", protocol="base2novel", out_dir=tmp_path / "tables", n_boot=20)
    md = paths["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Dataset", "Method", "dropout_rate", "res.weight",
                                                                  "Base", "Novel", "HM"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| **Average**") or line.startswith("|             ")]
    average = rows[:5]
    assert [r[1:4] for r in average] == [["CoOp", "—", "—"], ["DroPLe", "0.1", "0.0"], ["DroPLe", "0.1", "0.05"],
                                         ["DroPLe", "0.3", "0.0"], ["DroPLe", "0.3", "0.05"]]
    assert "(" not in md.split("| Dataset")[1].split("\n\n")[0]  # no label carries its knob values
    assert "Every row: backbone.name=ViT-B-16." in md
    tex = paths["tex"].read_text()
    assert r"\begin{tabular}{lccccc}" in tex and "Method & dropout\\_rate & res.weight & Base & Novel & HM" in tex
    assert r"DroPLe & 0.3 & 0.05 &" in tex
