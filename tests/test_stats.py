import numpy as np
import pytest

from dplbench.data.longtail import bucket_accuracies, bucket_labels
from dplbench.predictions import SplitPredictions
from dplbench.report.stats import (Bootstrap, Metric, averages, bootstrap_p_value, harmonic_and_average,
                                   harmonic_mean, holm)


def _split(correct: np.ndarray, classes: int = 10) -> SplitPredictions:
    n = len(correct)
    target = np.arange(n) % classes
    return SplitPredictions(np.arange(n), np.where(correct, target, (target + 1) % classes), target)


def simulate(rng, alphas, seeds, n, sd_item=2.0, sd_inter=0.5, sd_seed=0.1):
    """Per-item correctness of each method: logit = alpha + item difficulty (shared by all methods) + method-by-item
    effect + seed effect; Bernoulli per (seed, item). Identical alphas = the same generating process."""
    z = rng.normal(0, sd_item, n)
    out = {}
    for method, alpha in alphas.items():
        eta = rng.normal(0, sd_inter, n)
        out[method] = {s: {"t": _split(rng.random(n) < 1 / (1 + np.exp(-(alpha + z + eta + rng.normal(0, sd_seed)))))}
                       for s in range(seeds)}
    return out


def true_accuracy(alpha, sd_item=2.0, sd_inter=0.5, sd_seed=0.1, n=2_000_000):
    x = np.random.default_rng(99).normal(0, np.sqrt(sd_item ** 2 + sd_inter ** 2 + sd_seed ** 2), n)
    return 100 * np.mean(1 / (1 + np.exp(-(alpha + x))))


def test_holm_matches_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.02, np.nan, 0.01])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])


def test_harmonic_mean_and_p_value_edges():
    assert harmonic_mean(np.array([0.0, 80.0]), np.array([0.0, 60.0])) == pytest.approx([0.0, 2 * 80 * 60 / 140])
    assert bootstrap_p_value(np.zeros(100)) == 1.0
    assert bootstrap_p_value(np.full(999, 2.0)) == pytest.approx(2 / 1000)


def test_average_hm_comes_from_replicate_pairs_not_per_dataset_hms():
    # d1: base 90 / novel 30, d2: base 30 / novel 90 -> Average HM = HM(60, 60) = 60; mean of per-dataset HMs = 45
    rng = np.random.default_rng(0)
    preds = {"m": {s: {f"{d}:{part}": _split(rng.random(2000) < acc / 100)
                       for d, accs in (("d1", (90, 30)), ("d2", (30, 90)))
                       for part, acc in zip(("base", "novel"), accs)} for s in range(3)}}
    metrics = {(d, part): Metric(f"{d}:{part}") for d in ("d1", "d2") for part in ("base", "novel")}
    ivs = Bootstrap(preds, metrics, harmonic_and_average(["d1", "d2"]), n_boot=500, seed=0).intervals()["m"]
    avg = ivs[("Average", "hm")]
    assert avg.low < 60 < avg.high and avg.low > 50
    assert avg.value == pytest.approx(harmonic_mean(ivs[("Average", "base")].value, ivs[("Average", "novel")].value))
    assert ivs[("d1", "hm")].value == pytest.approx(harmonic_mean(ivs[("d1", "base")].value,
                                                                  ivs[("d1", "novel")].value))


def test_deterministic_given_seed_and_paired_identity():
    preds = simulate(np.random.default_rng(1), {"a": 0.5, "b": 0.5}, 3, 300)
    preds["c"] = preds["a"]
    run = lambda seed: Bootstrap(preds, {"acc": Metric("t")}, n_boot=300, seed=seed)  # noqa: E731
    assert run(3).intervals() == run(3).intervals()
    assert run(3).intervals()["a"]["acc"] != run(4).intervals()["a"]["acc"]
    same = run(3).compare("a", "c")["acc"]
    assert same.difference == 0 and same.low == same.high == 0 and same.p_value == 1.0


def test_more_seeds_tighten_the_intervals():
    widths = {}
    for seeds in (3, 10):
        w = []
        for i in range(5):
            preds = simulate(np.random.default_rng(i), {"a": 0.6, "b": 0.4}, seeds, 400, sd_seed=0.2)
            boot = Bootstrap(preds, {"acc": Metric("t")}, n_boot=400, seed=i)
            iv, diff = boot.intervals()["a"]["acc"], boot.compare("a", "b")["acc"]
            w.append((iv.high - iv.low, diff.high - diff.low))
        widths[seeds] = np.mean(w, axis=0)
    assert np.all(widths[10] < widths[3])


def test_long_tail_bucket_matches_the_table_rule_and_missing_seeds():
    rng = np.random.default_rng(2)
    train_counts = [120, 80, 60, 30, 12, 5, 3, 150, 40, 2]
    n = 600
    target = np.arange(n) % 10
    runs = {s: rng.random(n) < np.linspace(0.9, 0.4, 10)[target] for s in range(3)}
    split = lambda ok: SplitPredictions(np.arange(n), np.where(ok, target, (target + 1) % 10), target)  # noqa
    preds = {"m": {s: {"lt": split(ok)} for s, ok in runs.items()},
             "short": {s: {"lt": split(runs[s])} for s in (0, 1)}}          # one seed missing
    buckets = bucket_labels(train_counts)
    metrics = {b: Metric("lt", mask=np.isin(target, labels), per_class=True) for b, labels in buckets.items()}
    metrics["overall"] = Metric("lt", per_class=True)
    metrics["micro"] = Metric("lt")
    boot = Bootstrap(preds, metrics, averages({"mean3": ["many", "medium", "few"]}), n_boot=300, seed=0)
    ivs = boot.intervals()
    expected = [bucket_accuracies(np.where(ok, target, (target + 1) % 10), target, train_counts)
                for ok in runs.values()]
    for bucket in ("many", "medium", "few", "overall"):
        assert ivs["m"][bucket].value == pytest.approx(np.mean([e[bucket] for e in expected]))
        assert ivs["m"][bucket].low < ivs["m"][bucket].value < ivs["m"][bucket].high
        assert ivs["short"][bucket].value == pytest.approx(np.mean([e[bucket] for e in expected[:2]]))
    assert ivs["m"]["mean3"].value == pytest.approx(np.mean([ivs["m"][b].value for b in ("many", "medium", "few")]))
    assert ivs["m"]["micro"].value == pytest.approx(100 * np.mean([ok.mean() for ok in runs.values()]))
    # paired over the common seeds (0, 1): the same predictions there, so no difference at all
    assert boot.compare("m", "short")["overall"].difference == pytest.approx(0)
    assert boot.compare("m", "short")["overall"].p_value == 1.0


def test_rows_must_share_the_test_items():
    preds = {"a": {0: {"t": _split(np.ones(10, bool))}},
             "b": {0: {"t": SplitPredictions(np.arange(1, 11), np.zeros(10, int), np.zeros(10, int))}}}
    with pytest.raises(ValueError, match="other test items"):
        Bootstrap(preds, {"acc": Metric("t")}, n_boot=10)


def test_compare_to_best_marks_rows_with_holm():
    rng = np.random.default_rng(5)
    preds = simulate(rng, {"strong": 1.5, "close": 1.45, "weak": 0.3}, 5, 600)
    result = Bootstrap(preds, {"acc": Metric("t")}, n_boot=1000, seed=0).compare_to_best("acc")
    assert result.best == "strong"
    assert result.comparisons["weak"].p_adjusted < 0.05 and result.comparisons["weak"].difference < 0
    assert result.tied_with_best() == {"strong", "close"}
    raw = [result.comparisons[r].p_value for r in ("close", "weak")]
    assert [result.comparisons[r].p_adjusted for r in ("close", "weak")] == pytest.approx(list(holm(raw)))


def _calibration(sims: int, seeds: int, n: int, n_boot: int) -> tuple[float, float, np.ndarray]:
    """Coverage of the 95 % interval of a known difference, and p-values of pairs of identical methods."""
    truth = true_accuracy(0.8) - true_accuracy(0.6)
    rng = np.random.default_rng(2024)
    covered, pvalues = 0, []
    for i in range(sims):
        diff = Bootstrap(simulate(rng, {"a": 0.8, "b": 0.6}, seeds, n), {"acc": Metric("t")}, n_boot=n_boot,
                         seed=i).compare("a", "b")["acc"]
        covered += diff.low <= truth <= diff.high
        same = Bootstrap(simulate(rng, {"a": 0.7, "b": 0.7}, seeds, n), {"acc": Metric("t")}, n_boot=n_boot,
                         seed=i).compare("a", "b")["acc"]
        pvalues.append(same.p_value)
    pvalues = np.array(pvalues)
    return covered / sims, float(np.mean(pvalues < 0.05)), pvalues


def test_calibration_light():
    # 60 simulations: the binomial sd of a 0.95 coverage estimate is 0.028, of a 0.05 rate 0.028
    coverage, false_positives, pvalues = _calibration(60, 3, 300, 400)
    assert 0.85 <= coverage <= 1.0
    assert false_positives <= 0.15
    assert 0.2 < np.median(pvalues) < 0.8 and np.mean(pvalues > 0.9) < 0.35    # spread out, not piled at 1


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [3, 10])
def test_calibration(seeds):
    # 200 simulations: sd 0.015 around 0.95 -> [0.90, 0.99] is about +-3 sd; false positives <= 0.10 is +3.2 sd
    coverage, false_positives, pvalues = _calibration(200, seeds, 500, 1000)
    assert 0.90 <= coverage <= 0.99
    assert false_positives <= 0.10
    assert 0.25 < np.median(pvalues) < 0.75 and np.mean(pvalues < 0.5) > 0.3
