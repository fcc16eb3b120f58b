"""Prometheus metrics of the daemon, named per the Prometheus guide: aeguard_ prefix, base units, _total counters."""

from __future__ import annotations

import asyncio
import os

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from aeguard.scoring.results import is_anomalous

# Millisecond work: from half a millisecond to a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Scores are recorded relative to the threshold (1.0 = the threshold), so the buckets stay
# around the decision point even after a reload changes the threshold.
SCORE_RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 8.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def score_ratios(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The histogram's value per score: score / threshold for a positive threshold. A --rotation bundle's
    z-scored score can be negative, and with a high --target-fpr so can its threshold: below zero the value is
    1 + (score - threshold) / |threshold| (which would equal score / threshold for a positive one), so above 1
    still means score > threshold; at exactly 0, +inf for an anomalous score and 0 for any other."""
    if threshold > 0:
        return scores / threshold  # not 1 + (s - t) / t: its rounding could move a score across a bucket bound
    if threshold == 0:
        return np.where(scores > 0, np.inf, 0.0)
    return 1.0 + (scores - threshold) / abs(threshold)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """histogram.observe(v) for every v, at once: one searchsorted instead of a locked Python call per value
    (256 scores cost 0.7 ms that way, more than the dense model takes to score them).

    It adds to the histogram's own bucket and sum values (private in prometheus_client, stable since 0.4),
    so exposition and multiprocess mode stay as they are; tests/test_batching.py checks it against observe().
    """
    bounds = histogram._upper_bounds  # ascending, ending with +Inf; observe() counts v in the first bound >= v
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist()):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))


class Metrics:
    """All daemon metrics on one registry (a fresh one per app, so tests never share state)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # *_created series double the exposition and no dashboard reads them
        self.registry = registry or CollectorRegistry()
        if multiprocess_dir() is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "aeguard_http_requests", "HTTP requests by endpoint and status code.", ["endpoint", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "aeguard_http_request_duration_seconds",
            "Request latency, whole request.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "aeguard_inference_duration_seconds", "onnxruntime time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "aeguard_batch_size_images", "Images per onnxruntime call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.images = Counter("aeguard_images_scored", "Images scored.", registry=r)
        self.anomalies = Counter("aeguard_anomalies", "Images flagged as anomalous.", registry=r)
        self.non_finite = Counter(
            "aeguard_non_finite_scores",
            "Images the model gave a NaN or infinite score (answered with an error, not a verdict).",
            registry=r,
        )
        self.score_ratio = Histogram(
            "aeguard_anomaly_score_ratio",
            "Anomaly score divided by the model's threshold (above 1 = anomalous).",
            buckets=SCORE_RATIO_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "aeguard_http_requests_in_flight", "Requests being served.", multiprocess_mode="livesum", registry=r
        )
        self.reloads = Counter("aeguard_model_reloads", "Model reloads by result.", ["result"], registry=r)
        self.threshold = Gauge(
            "aeguard_model_threshold",
            "The served model's anomaly threshold.",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.calibrated_fpr = Gauge(
            "aeguard_model_calibrated_fpr",
            "Share of held-out normal images the threshold flags: the expected anomaly rate on normal traffic.",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.model_info = Gauge(
            "aeguard_model_info",
            "The served model (value 1; labels say which).",
            ["model", "version", "bundle_sha256", "aeguard_version", "provider"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.ready = Gauge(
            "aeguard_ready", "1 while the daemon accepts scoring requests.", multiprocess_mode="livemin", registry=r
        )
        self._info_labels: tuple | None = None
        # labels() costs a lock and a dict build per call; the hot path looks its children up here instead
        self._request_children: dict[tuple[str, int], tuple] = {}
        # Requests are recorded in plain Python on the event loop and written to the metrics once per loop
        # iteration (and before every scrape): per request, a prometheus_client call costs a lock each.
        self._in_flight = 0
        self._done: list[tuple[str, int, float]] = []
        self._flush_handle: asyncio.Handle | None = None
        for result in ("success", "failure"):
            self.reloads.labels(result=result)  # both series exist from the start, at 0

    def set_model(
        self,
        name: str,
        version: str,
        bundle_sha256: str,
        aeguard_version: str,
        provider: str,
        threshold: float,
        calibrated_fpr: float,
    ) -> None:
        labels = (name, version, bundle_sha256, aeguard_version, provider)
        if self._info_labels is not None and self._info_labels != labels:
            self.model_info.labels(*self._info_labels).set(0)
        self.model_info.labels(*labels).set(1)
        self._info_labels = labels
        self.threshold.set(threshold)
        self.calibrated_fpr.set(calibrated_fpr)

    def request_started(self) -> None:
        self._in_flight += 1

    def request_done(self, endpoint: str, status: int | None, seconds: float) -> None:
        """Called on the event loop; the metrics show it after this loop iteration (or at the next scrape).
        A status of None (no reply went out: the request was cancelled) only takes it out of the in-flight count."""
        self._in_flight -= 1
        if status is not None:
            self._done.append((endpoint, status, seconds))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush_requests)

    def flush_requests(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.in_flight.set(self._in_flight)
        done, self._done = self._done, []
        durations: dict[tuple[str, int], list[float]] = {}
        for endpoint, status, seconds in done:
            durations.setdefault((endpoint, status), []).append(seconds)
        for key, values in durations.items():
            children = self._request_children.get(key)
            if children is None:
                endpoint, status = key
                children = self._request_children[key] = (
                    self.requests.labels(endpoint=endpoint, code=str(status)),
                    self.request_seconds.labels(endpoint=endpoint),
                )
            children[0].inc(len(values))
            observe_many(children[1], np.array(values))

    def observe_batch(self, images: int, seconds: float) -> None:
        self.inference_seconds.observe(seconds)
        self.batch_size.observe(images)

    def observe_scores(self, scores: np.ndarray, threshold: float) -> None:
        self.images.inc(len(scores))
        finite = np.isfinite(scores)
        if not finite.all():  # one NaN in the histogram's sum would poison it until the daemon restarts
            self.non_finite.inc(int(np.count_nonzero(~finite)))
            scores = scores[finite]
        self.anomalies.inc(int(np.count_nonzero(is_anomalous(scores, threshold))))
        # in float64, as observe() on Python floats did: a float32 quotient can round a score just over the
        # threshold down to exactly 1.0 and into the bucket below, while anomalies counts it
        observe_many(self.score_ratio, score_ratios(np.asarray(scores, np.float64), threshold))

    def exposition(self) -> tuple[bytes, str]:
        self.flush_requests()
        if multiprocess_dir() is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
