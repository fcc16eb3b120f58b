"""The daemon's micro-batcher and request parsing, without HTTP: gathering, failures, timeouts, UINT8 input."""

import asyncio
import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from aeguard.errors import RequestError, RequestTimeoutError
from aeguard.serve import payloads
from aeguard.serve.batching import BatchingScorer, model_input
from aeguard.serve.metrics import Metrics, score_ratios


class FakeScorer:
    """Scores an image by its mean pixel; records every batch it was given; can be told to fail or stall."""

    threshold = 0.5

    def __init__(self):
        self.batches: list[int] = []
        self.threads: list[str] = []
        self.fail = False
        self.stall = threading.Event()
        self.stall.set()

    def score(self, images):
        self.stall.wait()
        self.batches.append(len(images))
        self.threads.append(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("onnxruntime fell over")
        return SimpleNamespace(scores=images.reshape(len(images), -1).mean(axis=1))


def batcher(
    scorer: FakeScorer,
    max_wait_s: float = 0.05,
    timeout_s: float = 5.0,
    batching: bool = True,
    seconds_per_image: float = 1.0,
):
    """By default the model is slow enough that every batch goes to the thread pool (see test_inline_*)."""
    model = SimpleNamespace(scorer=scorer, threshold=scorer.threshold, seconds_per_image=seconds_per_image)
    store = SimpleNamespace(current=model)
    return BatchingScorer(
        store,
        Metrics(),
        max_batch_size=8,
        max_wait_s=max_wait_s,
        batching=batching,
        workers=1,
        timeout_s=timeout_s,
        inline_max_s=0.001,
    )


def image(value: float, count: int = 1) -> np.ndarray:
    return np.full((count, 1, 4, 4), value, np.float32)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_scores():
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer)
        results = await asyncio.gather(
            *(scoring.score(image(i / 10)) for i in range(5)), scoring.score(image(0.9, count=2))
        )
        await scoring.stop()
        return results

    results = run(main())
    assert scorer.batches == [7]  # 5 single images and one pair, gathered while the first waited
    assert [scores[0] for scores, _ in results[:5]] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert results[5][0] == pytest.approx([0.9, 0.9])


def test_batches_never_exceed_the_maximum_and_later_requests_follow():
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer)
        results = await asyncio.gather(*(scoring.score(image(0.5)) for i in range(20)))
        await scoring.stop()
        return results

    assert len(run(main())) == 20
    assert max(scorer.batches) <= 8 and sum(scorer.batches) == 20


@pytest.mark.parametrize("seconds_per_image", [1.0, 0.0], ids=["thread pool", "event loop"])
def test_a_failed_batch_fails_its_requests_and_the_next_batch_works(seconds_per_image):
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer, seconds_per_image=seconds_per_image)
        scorer.fail = True
        failed = await asyncio.gather(scoring.score(image(0.1)), scoring.score(image(0.2)), return_exceptions=True)
        scorer.fail = False
        scores, _ = await scoring.score(image(0.3))
        await scoring.stop()
        return failed, scores

    failed, scores = run(main())
    assert all(isinstance(f, RuntimeError) and "fell over" in str(f) for f in failed)
    assert scores == pytest.approx([0.3]) and scorer.batches == [2, 1]


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


def test_fast_batches_run_on_the_event_loop_and_slow_ones_on_the_pool():
    async def main(seconds_per_image: float):
        scorer = FakeScorer()
        scoring = batcher(scorer, seconds_per_image=seconds_per_image)
        results = await asyncio.gather(*(scoring.score(image(i / 10)) for i in range(5)))
        await scoring.stop()
        return scorer, [scores[0] for scores, _ in results]

    fast, fast_scores = run(main(seconds_per_image=0.0001))  # 5 images: 0.5 ms, under inline_max_s
    slow, slow_scores = run(main(seconds_per_image=0.0003))  # 1.5 ms
    assert fast.batches == slow.batches == [5]
    assert fast.threads == [threading.main_thread().name] and slow.threads[0].startswith("aeguard-infer")
    assert fast_scores == slow_scores == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_uint8_images_are_scaled_once_per_batch_and_mix_with_float32():
    scorer = FakeScorer()

    async def main():
        scoring = batcher(scorer, seconds_per_image=0.0)
        results = await asyncio.gather(
            scoring.score(np.full((1, 1, 4, 4), 51, np.uint8)),
            scoring.score(image(0.5)),
            scoring.score(np.full((2, 1, 4, 4), 255, np.uint8)),
        )
        await scoring.stop()
        return [scores for scores, _ in results]

    assert run(main()) == [pytest.approx([0.2]), pytest.approx([0.5]), pytest.approx([1.0, 1.0])]
    assert scorer.batches == [4]


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


def tensor(payload: dict) -> np.ndarray:
    """What the daemon makes of a JSON-data infer request for a 1x2x2 model: its plan, then its pixels."""
    request = payloads.infer_request(payload)
    return payloads.oip_pixels(payloads.oip_plan(request, "images", (1, 2, 2), 8), request, None)


def test_uint8_data_flat_nested_and_integral_floats_read_alike():
    flat = tensor(oip([0, 51, 255, 102]))
    nested = tensor(oip([[[0, 51], [255, 102]]]))
    floats = tensor(oip([0.0, 51.0, 255.0, 102.0]))
    assert flat.dtype == np.uint8 and flat.shape == (1, 1, 2, 2)  # the batcher scales it (model_input)
    np.testing.assert_array_equal(flat.ravel(), [0, 51, 255, 102])
    np.testing.assert_array_equal(model_input([flat]).ravel(), np.array([0, 51, 255, 102], np.float32) / 255.0)
    np.testing.assert_array_equal(flat, nested)
    np.testing.assert_array_equal(flat, floats)


@pytest.mark.parametrize(
    "data, words",
    [
        ([0, 1, 2, 300], "integers in 0-255"),
        ([0, 1, 2, -1], "integers in 0-255"),
        ([0, 1, 2, 1.5], "integers in 0-255"),
        ([0, 1, 2], "needs 4"),
        ([0, 1, 2, "x"], "list of numbers"),
    ],
)
def test_bad_uint8_data_is_refused_with_the_reason(data, words):
    with pytest.raises(RequestError, match=words):
        tensor(oip(data))


def test_observing_many_scores_at_once_equals_observing_them_one_by_one():
    scores = np.array([0.0, 0.1, 0.5, 0.75, 1.0, 1.0000001, 3.0, 7.9, 1e9], np.float32)
    one_by_one, at_once = Metrics(), Metrics()
    for score in scores.tolist():
        one_by_one.score_ratio.observe(score / 0.5)
    at_once.observe_scores(scores, 0.5)

    def samples(metrics):
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in metrics.score_ratio.collect()
            for s in metric.samples
        }

    expected, got = samples(one_by_one), samples(at_once)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert expected[("aeguard_anomaly_score_ratio_count", ())] == len(scores)
    anomalies = {s.name: s.value for metric in at_once.anomalies.collect() for s in metric.samples}
    assert anomalies["aeguard_anomalies_total"] == 6  # the scores above the threshold 0.5


@pytest.mark.parametrize("threshold", [0.5, -2.0, 0.0])
def test_score_ratio_is_above_one_exactly_for_the_anomalies_whatever_the_threshold_sign(threshold):
    scores = np.array([-5.0, -2.0, -1.9, 0.0, 0.4, 0.5, 0.6, 3.0])
    ratios = score_ratios(scores, threshold)
    np.testing.assert_array_equal(ratios > 1.0, scores > threshold)
    if threshold > 0:
        np.testing.assert_array_equal(ratios, scores / threshold)  # the plain ratio where it means something


def test_plan_cache_parses_a_header_once_per_model_and_never_keeps_a_refused_one():
    header = json.dumps(
        {
            "inputs": [
                {"name": "images", "shape": [1, 1, 2, 2], "datatype": "UINT8", "parameters": {"binary_data_size": 4}}
            ]
        }
    ).encode()
    cache, model, other, larger = payloads.PlanCache(), object(), object(), object()
    plan = cache.plan(header, model, "images", (1, 2, 2), 8)
    assert plan.dims == (1, 1, 2, 2) and plan.binary_size == 4
    assert plan.outputs == (("score", False), ("is_anomaly", False))
    assert cache.plan(header, model, "images", (1, 2, 2), 8) is plan  # a hit: no parse, no checks
    assert cache.plan(header, other, "images", (1, 2, 2), 8) is not plan  # a reloaded model starts afresh
    with pytest.raises(RequestError, match="does not fit this model"):
        cache.plan(header, larger, "images", (1, 3, 3), 8)  # same bytes, a model of another shape: checked again
    wrong = header.replace(b'"binary_data_size": 4', b'"binary_data_size": 5')
    for _ in range(2):  # refused both times: a bad header is never kept
        with pytest.raises(RequestError, match="binary_data_size 5"):
            cache.plan(wrong, model, "images", (1, 2, 2), 8)
    pixels = payloads.oip_pixels(plan, None, memoryview(bytes([0, 51, 255, 102])))
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 1, 2, 2)
    with pytest.raises(RequestError, match="holds 3 bytes"):
        payloads.oip_pixels(plan, None, memoryview(bytes(3)))
