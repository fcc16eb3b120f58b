"""The one-class benchmark's bookkeeping: which runs count, how means and spreads are formed, resuming."""

import pytest

from benchmarks import one_class


def run(normal, seed, auroc, seconds=10.0):
    return {"normal": normal, "seed": seed, "auroc": auroc, "seconds": seconds, "roc_tpr": [0.0, 1.0]}


def test_mean_over_classes_then_mean_and_std_over_complete_seeds():
    classes = [0, 1]
    runs = [run(0, 0, 0.90), run(1, 0, 0.80), run(0, 1, 1.00), run(1, 1, 0.90), run(0, 2, 0.5)]
    summary = one_class.summarise(runs, classes)
    assert summary["seeds"] == [0, 1]  # seed 2 lacks class 1: not in the mean
    assert summary["seed_means"] == pytest.approx([0.85, 0.95])
    assert summary["mean"] == pytest.approx(0.90) and summary["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert summary["per_class"][0] == pytest.approx((0.9 + 1.0 + 0.5) / 3)
    assert summary["minutes_per_seed"] == pytest.approx(20 / 60)


def test_incomplete_table_has_no_mean_and_says_so():
    payload = {
        "machine": {"cpus": 2, "machine": "x86_64", "python": "3.11"},
        "torch_threads": 2,
        "epochs": 20,
        "models": {"conv": {"runs": [run(3, 0, 0.97)], "command": "aeguard fit --model conv"}},
    }
    assert one_class.summarise(payload["models"]["conv"]["runs"], list(range(10)))["mean"] is None
    table = one_class.render_markdown("mnist", payload)
    assert "| conv |  |  |  | 97.0 |" in table and "incomplete" in table
    assert "ARNet (Ye et al. 2022) | 98.3" in table


def test_presets_are_valid_fit_options():
    import typer

    from aeguard import Detector
    from aeguard.cli.main import app
    from aeguard.config import model_config

    fit_flags = {flag for param in typer.main.get_command(app).commands["fit"].params for flag in param.opts}
    for name, preset in one_class.PRESETS.items():
        detector = Detector(**preset)  # an unknown key would raise TypeError
        config = model_config(detector.config(), (1, 28, 28))  # an unknown model, activation or noise: UsageError
        assert config["activation"] == preset.get("activation", "leaky-relu"), name
        if name.endswith("-relu"):  # the rows kept from before LeakyReLU became the default
            assert config["activation"] == "relu", name
        command = one_class.command_line(preset, 20)
        assert command.startswith(f"aeguard fit --model {preset['model']}")
        assert {word for word in command.split() if word.startswith("--")} <= fit_flags, command  # the README quotes it


def test_runs_fitted_side_by_side_count_in_the_means_but_not_in_the_times():
    classes = [0, 1]
    side_by_side = [{**run(0, 1, 0.70, seconds=500.0), "jobs": 2}, {**run(1, 1, 0.90, seconds=500.0), "jobs": 2}]
    summary = one_class.summarise([run(0, 0, 0.90), run(1, 0, 0.80), *side_by_side], classes)
    assert summary["seed_means"] == pytest.approx([0.85, 0.80])
    assert summary["seconds_per_class"] == pytest.approx(10.0)
    assert summary["minutes_per_seed"] == pytest.approx(20 / 60)
    only_side_by_side = one_class.summarise(side_by_side, classes)
    assert only_side_by_side["seconds_per_class"] is None and only_side_by_side["minutes_per_seed"] is None


def test_the_best_models_are_presets_and_the_table_refuses_seeds_it_would_not_fit(monkeypatch, tmp_path):
    assert set(one_class.BEST) == {"mnist", "fashion-mnist"} and set(one_class.BEST.values()) <= set(one_class.PRESETS)
    monkeypatch.setattr(one_class, "RESULTS_DIR", tmp_path)
    already = {"models": {one_class.BEST["mnist"]: {"runs": [run(4, 0, 0.9)], "epochs": 20}}}
    monkeypatch.setattr(one_class, "load", lambda dataset, fresh: already if dataset == "mnist" else {"models": {}})
    monkeypatch.setattr("sys.argv", ["one_class", "--table", "--seeds", "0"])
    with pytest.raises(SystemExit, match="pick new seeds"):  # seed 0 of MNIST class 4 is in the JSON already
        one_class.main()
