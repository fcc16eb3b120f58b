"""serve_load's summary figures, on made-up rounds (the benchmark itself needs wrk and minutes)."""

import pytest

from benchmarks.serve_load import round_ratios


def test_round_ratios_pair_each_round_with_the_same_rounds_baseline():
    results = {
        "c": {"rounds_requests_per_s": [4000.0, 5000.0, 3000.0]},
        "d": {"rounds_requests_per_s": [8000.0, 12500.0, 5000.0]},
    }
    ratios = round_ratios(results, "c", "d")
    assert ratios["rounds"] == pytest.approx([0.5, 0.4, 0.6])
    assert ratios["median"] == pytest.approx(0.5)
    # the best-of-rounds ratio would pair 5000 with 12500 (0.4): a different, luckier-baseline figure
    assert max(results["c"]["rounds_requests_per_s"]) / max(results["d"]["rounds_requests_per_s"]) == pytest.approx(0.4)
