"""The daemon's micro-batcher and request parsing, without HTTP: gathering, failures, timeouts, UINT8 input."""

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from aeguard.errors import RequestError, RequestTimeoutError
from aeguard.serve import payloads
from aeguard.serve.batching import BatchingScorer
from aeguard.serve.metrics import Metrics


class FakeScorer:
    """Scores an image by its mean pixel; records every batch it was given; can be told to fail or stall."""

    threshold = 0.5

    def __init__(self):
        self.batches: list[int] = []
        self.fail = False
        self.stall = threading.Event()
        self.stall.set()

    def score(self, images):
        self.stall.wait()
        self.batches.append(len(images))
        if self.fail:
            raise RuntimeError("onnxruntime fell over")
        return SimpleNamespace(scores=images.reshape(len(images), -1).mean(axis=1))


def batcher(scorer: FakeScorer, max_wait_s: float = 0.05, timeout_s: float = 5.0, batching: bool = True):
    model = SimpleNamespace(scorer=scorer, threshold=scorer.threshold)
    store = SimpleNamespace(current=model)
    return BatchingScorer(store, Metrics(), max_batch_size=8, max_wait_s=max_wait_s, batching=batching,
                          workers=1, timeout_s=timeout_s)


def image(value: float, count: int = 1) -> np.ndarray:
    return np.full((count, 1, 4, 4), value, np.float32)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_scores():
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer)
        results = await asyncio.gather(*(scoring.score(image(i / 10)) for i in range(5)),
                                       scoring.score(image(0.9, count=2)))
        await scoring.stop()
        return results

    results = run(main())
    assert scorer.batches == [7]  # 5 single images and one pair, gathered while the first waited
    assert [float(scores[0]) for scores, _ in results[:5]] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert results[5][0].tolist() == pytest.approx([0.9, 0.9])


def test_batches_never_exceed_the_maximum_and_later_requests_follow():
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer)
        results = await asyncio.gather(*(scoring.score(image(0.5)) for i in range(20)))
        await scoring.stop()
        return results

    assert len(run(main())) == 20
    assert max(scorer.batches) <= 8 and sum(scorer.batches) == 20


def test_a_failed_batch_fails_its_requests_and_the_next_batch_works():
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer)
        scorer.fail = True
        failed = await asyncio.gather(scoring.score(image(0.1)), scoring.score(image(0.2)), return_exceptions=True)
        scorer.fail = False
        scores, _ = await scoring.score(image(0.3))
        await scoring.stop()
        return failed, scores

    failed, scores = run(main())
    assert all(isinstance(f, RuntimeError) and "fell over" in str(f) for f in failed)
    assert scores.tolist() == pytest.approx([0.3])


def test_a_request_that_is_not_scored_in_time_gets_a_timeout_and_leaves_its_batch():
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer, max_wait_s=0.001, timeout_s=0.2)
        scorer.stall.clear()  # the first batch hangs in onnxruntime...
        first = asyncio.ensure_future(scoring.score(image(0.1)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(scoring.score(image(0.2)))  # ...so this one waits behind it
        started = time.monotonic()
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        waited = time.monotonic() - started
        scorer.stall.set()
        await scoring.stop()
        return outcomes, waited

    outcomes, waited = run(main())
    assert all(isinstance(o, RequestTimeoutError) and "0.2s" in str(o) for o in outcomes)
    assert waited < 1.0
    assert scorer.batches == [1]  # the timed-out second request was never scored


def test_without_batching_every_request_is_its_own_call():
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer, batching=False)
        await asyncio.gather(*(scoring.score(image(0.5)) for _ in range(3)))
        await scoring.stop()

    run(main())
    assert scorer.batches == [1, 1, 1]


def oip(data, datatype="UINT8", shape=(1, 2, 2)):
    return {"inputs": [{"name": "images", "shape": list(shape), "datatype": datatype, "data": data}]}


def test_uint8_data_flat_nested_and_integral_floats_read_alike():
    flat = payloads.oip_input_tensor(oip([0, 51, 255, 102]), "images", (1, 2, 2), 8)
    nested = payloads.oip_input_tensor(oip([[[0, 51], [255, 102]]]), "images", (1, 2, 2), 8)
    floats = payloads.oip_input_tensor(oip([0.0, 51.0, 255.0, 102.0]), "images", (1, 2, 2), 8)
    assert flat.dtype == np.float32 and flat.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(flat.ravel(), np.array([0, 51, 255, 102], np.float32) / 255.0)
    np.testing.assert_array_equal(flat, nested)
    np.testing.assert_array_equal(flat, floats)


@pytest.mark.parametrize("data, words", [
    ([0, 1, 2, 300], "integers in 0-255"),
    ([0, 1, 2, -1], "integers in 0-255"),
    ([0, 1, 2, 1.5], "integers in 0-255"),
    ([0, 1, 2], "needs 4"),
    ([0, 1, 2, "x"], "list of numbers"),
])
def test_bad_uint8_data_is_refused_with_the_reason(data, words):
    with pytest.raises(RequestError, match=words):
        payloads.oip_input_tensor(oip(data), "images", (1, 2, 2), 8)


def test_observing_many_scores_at_once_equals_observing_them_one_by_one():
    scores = np.array([0.0, 0.1, 0.5, 0.75, 1.0, 1.0000001, 3.0, 7.9, 1e9], np.float32)
    one_by_one, at_once = Metrics(), Metrics()
    for score in scores.tolist():
        one_by_one.score_ratio.observe(score / 0.5)
    at_once.observe_scores(scores, 0.5)

    def samples(metrics):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for metric in metrics.score_ratio.collect() for s in metric.samples}

    expected, got = samples(one_by_one), samples(at_once)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert expected[("aeguard_anomaly_score_ratio_count", ())] == len(scores)
    anomalies = {s.name: s.value for metric in at_once.anomalies.collect() for s in metric.samples}
    assert anomalies["aeguard_anomalies_total"] == 6  # the scores above the threshold 0.5
