"""The fit pipeline: data -> train -> export with parity check -> calibrate -> evaluate -> bundle + report."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from aeguard import __version__
from aeguard.bundle import MODEL_NAME, VALIDATION_SCORES_NAME, WEIGHTS_NAME, make_shareable, write_manifest
from aeguard.scoring.threshold import calibration_summary
from aeguard.data.images import preprocessing_spec
from aeguard.data.sources import TrainingData, dataset_training_data, folder_training_data
from aeguard.errors import TrainingCollapsedError, UsageError
from aeguard.report.evaluate import evaluate_bundle
from aeguard.scoring.scorer import Scorer, open_session, score_array
from aeguard.train.export import INPUT_NAME, OPSET, OUTPUTS, check_parity, export_onnx, parity_max_abs_diff, scoring_graph
from aeguard.train.distributed import (
    DistributedContext, barrier, init_from_env, launched_by_torchrun, process_device, shutdown,
)
from aeguard.train.loop import (
    BatchCallback, EpochCallback, TrainConfig, TrainResult, reconstruction_spread, seed_everything, train,
)
from aeguard.train.models import activation_layer, backbone_of, build_model, default_config
from aeguard.train.objectives import parse_noise
from aeguard.train.scoring import ScoringGraph, score_config
from aeguard.train.samples import write_prior_samples

PARITY_IMAGES = 512
REPORT_DIR = "report"


@dataclass
class FitOptions:
    out: Path
    dataset: str = "mnist"
    normal: str = "0"
    data: Path | None = None  # a folder of the user's own normal images, instead of --dataset
    data_dir: Path | None = None
    image_size: str | None = None
    model: str = "conv"
    latent: int | None = None
    hidden: list[int] | None = None  # dense widths, or conv channels
    activation: str | None = None  # hidden-layer activation, relu or leaky-relu [leaky-relu]
    noise: str | None = None  # corruption while training, e.g. gaussian:0.2 (the denoising model's default)
    sparsity: float | None = None  # L1 weight on the code
    k: int | None = None  # k-sparse: code units kept
    contraction: float | None = None  # weight of the encoder-Jacobian penalty
    beta: float | None = None  # KL weight of a variational model
    score: str = "mse"
    score_sigma: float | None = None
    score_top: float | None = None  # the score averages the largest share of the error map's values [1: all]
    knn: int = 0  # > 0: the score is multiplied by the mean latent distance to the knn nearest training codes
    ensemble: int = 1  # independently seeded members whose error maps are averaged
    max_images: int | None = None  # cap on the normal training images, for quick trials
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    val_fraction: float = 0.1
    target_fpr: float = 0.01
    force: bool = False
    allow_download: bool = True


def load_training_data(options: FitOptions) -> TrainingData:
    if options.data is not None:
        data = folder_training_data(options.data, options.image_size, options.val_fraction, options.train.seed)
    elif options.image_size is not None:
        raise UsageError("--image-size applies to --data folders; IDX data sets keep their native size")
    else:
        data = dataset_training_data(options.dataset, options.normal, options.data_dir, options.val_fraction,
                                     options.train.seed, options.allow_download)
    if options.max_images is not None:
        if options.max_images < 2:
            raise UsageError(f"--max-images must be at least 2, got {options.max_images}")
        # The split is already shuffled: keep the same share held out, from the front of each part.
        held_out = max(1, round(options.max_images * options.val_fraction))
        data.train, data.validation = data.train[: options.max_images - held_out], data.validation[:held_out]
        data.source.update(n_train=int(len(data.train)), n_validation=int(len(data.validation)),
                           max_images=options.max_images)
    return data


def model_config(options: FitOptions, input_shape: tuple[int, int, int]) -> dict:
    config = default_config(options.model, *input_shape)
    if options.latent is not None:
        config["latent"] = options.latent
    if options.hidden:
        config["hidden" if backbone_of(config) == "dense" else "conv_channels"] = list(options.hidden)
    if options.activation is not None:
        activation_layer(options.activation)  # refuses an unknown name before any data is read
        config["activation"] = options.activation
    if options.k is not None:
        if config["variational"]:
            raise UsageError("--k does not apply to the variational models: their code is a distribution")
        config["k_sparse"] = options.k
    if config["k_sparse"] is not None and config["k_sparse"] > config["latent"]:
        raise UsageError(f"--k {config['k_sparse']} exceeds the code size --latent {config['latent']}")
    terms = config["training"]
    if options.noise is not None:
        parse_noise(options.noise)
        terms["noise"] = None if options.noise == "none" else options.noise
    for key, value in (("l1", options.sparsity), ("contraction", options.contraction), ("beta", options.beta)):
        if value is not None:
            if value < 0:
                raise UsageError(f"the {key} weight must not be negative, got {value}")
            terms[key] = float(value)
    if terms["beta"] and not config["variational"]:
        raise UsageError("--beta applies to the variational models (vae, conv-vae)")
    if options.score == "elbo" and not config["variational"]:
        raise UsageError("--score elbo needs a variational model (vae, conv-vae)")
    if options.ensemble < 1:
        raise UsageError(f"--ensemble must be at least 1, got {options.ensemble}")
    config["ensemble"] = options.ensemble
    return config


def model_score_config(options: FitOptions, config: dict) -> dict:
    return score_config(options.score, options.score_sigma, config["training"]["beta"] if config["variational"] else 1.0,
                        options.knn, options.score_top)


def check_out(out: Path, force: bool) -> None:
    """Refuse an occupied or unwritable --out before any training time is spent."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} already holds files; pass --force to replace it, or choose another folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(prefix=f".{out.name}.probe-", dir=out.parent).cleanup()
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write in {out.parent} ({exc.strerror or exc})") from None


def _prepare_out(out: Path, force: bool) -> Path:
    check_out(out, force)
    remove_stale_staging(out)
    # Everything is built in a hidden sibling and moved into place at the end: a failed or
    # interrupted fit never leaves a half-written bundle, nor destroys the previous one.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    make_shareable(staging, directory=True)
    return staging


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_staging(out: Path) -> None:
    """Remove the staging folders of fits into `out` that were killed (their process is gone)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:partial|old)-([0-9]+)(?:-.*)?")
    for sibling in out.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and sibling.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def _swap_into_place(staging: Path, out: Path) -> None:
    """Put the finished bundle at `out` so that a kill at any moment leaves a whole bundle there (old or new).

    Two renames (old away, new in) leave nothing at `out` between them; Linux swaps two paths in one
    step (renameat2 with RENAME_EXCHANGE). Elsewhere, or on a file system without it, the old bundle is
    moved aside first and `remove_stale_staging` cleans up after a kill.
    """
    if out.exists() and exchange_paths(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous bundle
        return
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
    os.replace(staging, out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS):  # a file system or kernel without it
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def _training_record(config: TrainConfig, result: TrainResult) -> dict:
    return {
        "config": dataclasses.asdict(config),
        "device": result.device,
        "torch_version": torch.__version__,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "init_seed": result.init_seed,  # differs from config.seed only after a collapsed first attempt
        "history": [dataclasses.asdict(r) for r in result.history],
    }


# Reconstructions that vary less than this share of the inputs' own variation: one output for every input.
# A dead network measures 0.0 %; a model trained one epoch on 100 images (as in the tests) about 3 %.
COLLAPSE_SPREAD = 0.005
COLLAPSE_RETRIES = 2  # fresh initialisations tried after a collapsed one
RETRY_SEED_STRIDE = 1_000_003  # retry k initialises with seed + k * stride: deterministic, far from other members


def _train_member(config: dict, data: TrainingData, train_config: TrainConfig, on_batch, on_epoch,
                  context: DistributedContext, log: Callable[[str], None]):
    """Train one model; a collapsed one (its reconstructions all alike) is trained again from a fresh initialisation.

    A collapsed network (every ReLU of a layer dead, the decoder stuck at the data's mean grey) gives every
    image the same reconstruction, so its score only measures brightness. Seen with the conv backbone on
    MNIST digit 1: the loss never moves after the first epoch and the AUROC falls from 99.9 to 90. The
    data split, batch order and corruption keep the run's seed; only the initial weights change, and the
    manifest records the initialisation seed used. Healthy runs are untouched.
    """
    seed = train_config.seed
    validation = torch.from_numpy(np.ascontiguousarray(data.validation, np.float32))
    for attempt in range(COLLAPSE_RETRIES + 1):
        init_seed = seed + attempt * RETRY_SEED_STRIDE
        seed_everything(init_seed)  # before the model exists: initial weights are part of the run
        model = build_model(config)
        result = train(model, data.train, data.validation, train_config, on_batch, on_epoch, context, config["training"])
        spread = reconstruction_spread(model, validation.to(next(model.parameters()).device))
        result.init_seed = init_seed
        if spread >= COLLAPSE_SPREAD:
            log(f"best validation loss {result.best_val_loss:.6f} at epoch {result.best_epoch}; "
                f"reconstruction spread {spread:.2f}")
            return model, result
        log(f"training collapsed (initialisation seed {init_seed}): every held-out image gets nearly the same "
            f"reconstruction (spread {spread:.1%} of the images'); "
            + ("training again from a fresh initialisation" if attempt < COLLAPSE_RETRIES else "giving up"))
    raise TrainingCollapsedError(
        f"training collapsed {COLLAPSE_RETRIES + 1} times (seed {seed} and {COLLAPSE_RETRIES} fresh initialisations): "
        "the model reconstructs every held-out image as nearly the same image, so its score would not separate "
        "anomalies; no bundle was written. Try another --seed, a larger --latent, or --noise erase:0.25")


def fit(
    options: FitOptions,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Run the whole pipeline and return the written manifest; the bundle lands in options.out.

    Under torchrun (or `spawn_fit`) every process trains its share; rank 0 alone exports and
    writes the bundle, and the other ranks return None.
    """
    out = Path(options.out)
    check_out(out, options.force)
    context = DistributedContext()
    train_config = options.train
    if launched_by_torchrun():
        context = init_from_env(options.train.device)
        train_config = dataclasses.replace(options.train, device=process_device(context, options.train.device))
        if not context.is_main:
            on_batch = on_epoch = None
            log = lambda line: None  # noqa: E731 - rank 0 speaks for the job
    try:
        data = load_training_data(options)
        config = model_config(options, data.input_shape)
        score = model_score_config(options, config)
        members, results = [], []
        for member in range(options.ensemble):
            log(f"training {config['kind']} autoencoder"
                + (f" (ensemble member {member + 1}/{options.ensemble})" if options.ensemble > 1 else "")
                + f" on {len(data.train)} normal images ({len(data.validation)} held out), input {data.input_shape}"
                + (f", {context.world_size} processes" if context.enabled else ""))
            model, result = _train_member(config, data, dataclasses.replace(train_config, seed=options.train.seed + member),
                                          on_batch, on_epoch, context, log)
            members.append(model)
            results.append(result)
    finally:
        barrier()
        shutdown()
    if not context.is_main:
        return None
    graph = scoring_graph(config, score, members)
    return _write_bundle(options, out, data, config, score, graph, results, context, log)


def _write_bundle(options: FitOptions, out: Path, data: TrainingData, config: dict, score: dict, graph: ScoringGraph,
                  results: list[TrainResult], context: DistributedContext, log: Callable[[str], None]) -> dict:
    """Export, check parity, calibrate, evaluate; then move the finished bundle into place."""
    staging = _prepare_out(out, options.force)
    try:
        graph = graph.cpu().eval()
        score = dict(score)
        if graph.knn:  # the codes of the training split only: validation and test images stay unseen
            score["references"] = graph.set_reference_codes(torch.from_numpy(data.train), seed=options.train.seed)
        torch.save(graph.state_dict(), staging / WEIGHTS_NAME)
        export_onnx(graph, data.input_shape, staging / MODEL_NAME)
        parity_source = data.evaluation.images if data.evaluation is not None else data.validation
        parity = parity_max_abs_diff(graph, staging / MODEL_NAME, parity_source[:PARITY_IMAGES])
        check_parity(parity)
        log(f"parity torch vs onnxruntime: max |score diff| {parity['max_abs_diff']:.3g}")

        manifest = {
            "name": out.name,
            "aeguard_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": preprocessing_spec(*data.input_shape[1:]),
            "model": config,
            "score": {**score, "higher_is_anomalous": True, "is_anomaly": "score > threshold"},
            "onnx": {"opset": OPSET, "input": INPUT_NAME, "outputs": list(OUTPUTS)},
            "data": data.source,
            "normal_classes": data.source.get("normal_classes"),
            "threshold": None,
            "calibration": None,
            "metrics": None,
            "parity": parity,
            "training": {**_training_record(options.train, results[0]), "processes": context.world_size,
                         "members": [_training_record(dataclasses.replace(options.train, seed=options.train.seed + i), r)
                                     for i, r in enumerate(results[1:], start=1)]},
        }
        # Calibrate on the exported graph itself, so the threshold matches what runtimes compute.
        val_scores = score_array(open_session(staging / MODEL_NAME), data.validation)
        np.save(staging / VALIDATION_SCORES_NAME, val_scores.astype(np.float32), allow_pickle=False)
        manifest["calibration"] = calibration_summary(val_scores, options.target_fpr)
        manifest["threshold"] = manifest["calibration"]["threshold"]
        files = [MODEL_NAME, WEIGHTS_NAME, VALIDATION_SCORES_NAME]
        manifest = write_manifest(staging, manifest, files)
        if config["variational"]:  # the decoder alone is not in the ONNX graph, so torch draws these
            write_prior_samples(graph.members[0], staging / REPORT_DIR, seed=options.train.seed)
        report = evaluate_bundle(Scorer(staging), data.evaluation, staging / REPORT_DIR, bundle_label=out)
        if report["metrics"] is not None:
            manifest["metrics"] = report["metrics"]
            manifest = write_manifest(staging, manifest, files)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"bundle written to {out}")
    return manifest
