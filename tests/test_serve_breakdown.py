"""The serve_breakdown benchmark's variants: each one answers real requests, and the daemon is left as shipped."""

from aeguard.serve.batching import BatchingScorer
from benchmarks import serve_breakdown


def test_every_variant_serves_and_the_stubs_are_put_back(mnist_bundle):
    shipped = {name: getattr(BatchingScorer, name) for name in ("score", "_infer")}
    results = serve_breakdown.measure(mnist_bundle, rounds=1, requests_per_client=2)  # drive() checks every 200
    assert set(results) == set(serve_breakdown.VARIANTS)
    assert all(entry["best_us"] > 0 for entry in results.values())
    # the real daemon does strictly more than the do-nothing endpoint
    assert results["full"]["best_us"] > results["bare"]["best_us"]
    assert {name: getattr(BatchingScorer, name) for name in shipped} == shipped
    table = serve_breakdown.render_markdown("conv", results, None)
    assert "+ onnxruntime inference (the real daemon)" in table and "CPU steal during the run: n/a" in table
