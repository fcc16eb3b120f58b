"""The scoring path (runtime, batch scoring, evaluation, the score/evaluate/calibrate commands) never imports torch;
the decoding workers import neither onnxruntime nor matplotlib."""

import subprocess
import sys
import textwrap


def test_scoring_never_imports_torch(mnist_bundle, data_dir, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from aeguard.cli.main import app
        import aeguard.scoring.scorer, aeguard.batch.engine, aeguard.report.evaluate, aeguard.data.sources
        import aeguard.report.metrics
        runner = CliRunner()
        for args in (["dump-images", {str(tmp_path / "p")!r}, "--count", "20"],
                     ["score", {str(mnist_bundle)!r}, {str(tmp_path / "p")!r}, "-o", {str(tmp_path / "s.csv")!r}],
                     ["evaluate", {str(mnist_bundle)!r}, "--report-dir", {str(tmp_path / "r")!r}],
                     ["calibrate", {str(mnist_bundle)!r}, {str(tmp_path / "p")!r}, "-o", {str(tmp_path / "c")!r}]):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("TORCH_MODULES", loaded)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "TORCH_MODULES []" in done.stdout
    assert (tmp_path / "s.csv").read_text().count("\n") == 21


def test_decode_workers_load_only_numpy_and_pillow():
    """The forkserver preloads aeguard.batch.decoding: onnxruntime or matplotlib there would add half a second to every
    `aeguard score` run."""
    script = (
        "import sys, aeguard.batch.decoding; "
        "print('HEAVY', sorted(m for m in ('onnxruntime', 'matplotlib', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
