"""The torch side of fitting: train the members, export the scoring graph with its parity checked, calibrate.

`fit_contents` turns training data and a DetectorConfig into a bundle in memory (BundleContents), which
`Detector` keeps and `aeguard fit` writes: both front ends train, export and calibrate through this module,
so the same data and seed give the same model.onnx either way.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from aeguard import __version__
from aeguard.bundle import MODEL_NAME, VALIDATION_SCORES_NAME, WEIGHTS_NAME, BundleContents
from aeguard.config import DetectorConfig, TrainConfig, detector_score_config, model_config
from aeguard.data.contract import Preprocessing
from aeguard.data.sources import TrainingData
from aeguard.errors import TrainingCollapsedError
from aeguard.scoring.scorer import float_batch, open_session, score_array
from aeguard.scoring.threshold import calibration_summary
from aeguard.train.distributed import (
    DistributedContext,
    barrier,
    init_from_env,
    launched_by_torchrun,
    process_device,
    shutdown,
)
from aeguard.train.export import (
    INPUT_NAME,
    OPSET,
    OUTPUTS,
    check_parity,
    export_onnx,
    parity_max_abs_diff,
    scoring_graph,
    standardised,
)
from aeguard.train.loop import (
    BatchCallback,
    EpochCallback,
    TrainResult,
    explained_variation,
    reconstruction_spread,
    seed_everything,
    train,
)
from aeguard.train.models import Autoencoder, build_model
from aeguard.train.rotation import RotationHead, train_rotation_head
from aeguard.train.scoring import ScoringGraph

PARITY_IMAGES = 512


def preprocessing_of(data: TrainingData) -> Preprocessing:
    assert data.preprocessing is not None  # TrainingData sets it from the arrays' shape when not given
    return data.preprocessing


def _training_record(config: TrainConfig, result: TrainResult) -> dict:
    return {
        "config": dataclasses.asdict(config),
        "device": result.device,
        "precision": result.precision,  # what config.precision resolved to on this device
        "torch_version": torch.__version__,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "init_seed": result.init_seed,  # differs from config.seed only after a collapsed first attempt
        "collapse_check": result.collapse_check,
        "history": [dataclasses.asdict(r) for r in result.history],
    }


# Reconstructions that vary less than this share of the inputs' own variation: one output for every input.
# A dead network measures 0.0 %; a model trained one epoch on 100 images (as in the tests) about 3 %.
COLLAPSE_SPREAD = 0.005
# A model that reconstructs no better than the data's mean image (explained variation below this) has
# collapsed too, even when its outputs differ a little from image to image, if its training had converged
# (stopped early: more epochs would not have helped). One still improving at its last epoch is only
# undertrained, as in a quick trial of a few epochs: it is kept, with a warning to train longer.
COLLAPSE_EXPLAINED = 0.02
COLLAPSE_RETRIES = 2  # fresh initialisations tried after a collapsed one
RETRY_SEED_STRIDE = 1_000_003  # retry k initialises with seed + k * stride: deterministic, far from other members


def train_member(
    config: dict,
    data: TrainingData,
    train_config: TrainConfig,
    on_batch,
    on_epoch,
    context: DistributedContext,
    log: Callable[[str], None],
):
    """Train one model; a collapsed one (its reconstructions all alike) is trained again from a fresh initialisation.

    A collapsed network (every ReLU of a layer dead, the decoder stuck at the data's mean grey) gives every
    image the same reconstruction, so its score only measures brightness. Seen with the conv backbone on
    MNIST digit 1: the loss never moves after the first epoch and the AUROC falls from 99.9 to 90. The
    data split, batch order and corruption keep the run's seed; only the initial weights change, and the
    manifest records the initialisation seed used. Healthy runs are untouched.
    """
    seed = train_config.seed
    validation = torch.from_numpy(float_batch(data.validation))
    for attempt in range(COLLAPSE_RETRIES + 1):
        init_seed = seed + attempt * RETRY_SEED_STRIDE
        seed_everything(init_seed)  # before the model exists: initial weights are part of the run
        model = build_model(config)
        result = train(
            model, data.train, data.validation, train_config, on_batch, on_epoch, context, config["training"]
        )
        held_out = validation.to(next(model.parameters()).device)
        spread, explained = reconstruction_spread(model, held_out), explained_variation(model, held_out)
        result.init_seed = init_seed
        result.collapse_check = {"spread": spread, "explained_variation": explained}
        mean_image_only = explained < COLLAPSE_EXPLAINED
        if spread >= COLLAPSE_SPREAD and (not mean_image_only or not result.stopped_early):
            log(
                f"best validation loss {result.best_val_loss:.6f} at epoch {result.best_epoch}; "
                f"reconstruction spread {spread:.2f}, explained variation {explained:.2f}"
            )
            if mean_image_only:
                result.collapse_check["warning"] = "undertrained"
                log(
                    f"warning: after {len(result.history)} epochs the model reconstructs no better than the mean "
                    f"image (explained variation {explained:.3f}) and was still improving: train longer (--epochs)"
                )
            return model, result
        why = (
            f"every held-out image gets nearly the same reconstruction (spread {spread:.1%} of the images')"
            if spread < COLLAPSE_SPREAD
            else f"it reconstructs no better than the mean image (explained variation {explained:.3f})"
        )
        log(
            f"training collapsed (initialisation seed {init_seed}): {why}; "
            + ("training again from a fresh initialisation" if attempt < COLLAPSE_RETRIES else "giving up")
        )
    raise TrainingCollapsedError(
        f"training collapsed {COLLAPSE_RETRIES + 1} times (seed {seed} and {COLLAPSE_RETRIES} fresh initialisations): "
        "the model reconstructs every held-out image as nearly the same image (or no better than their mean image), "
        "so its score would not separate anomalies; no bundle was written. Try more --epochs, another --seed, "
        "a larger --latent, or --noise erase:0.25"
    )


@dataclass
class Trained:
    """The fitted members of one detector and what their training recorded."""

    model: dict  # the manifest's model entry
    score: dict  # the manifest's score entry
    members: list[Autoencoder]
    results: list[TrainResult]
    context: DistributedContext
    rotation: RotationHead | None = None  # with --rotation: the rotation classifier
    rotation_record: dict | None = None  # and what its training recorded


def train_members(
    config: DetectorConfig,
    data: TrainingData,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
    log: Callable[[str], None] = print,
) -> Trained | None:
    """Train every ensemble member on `data`. Under torchrun every process trains its share and only rank 0
    gets the result (the others get None)."""
    model = model_config(config, data.input_shape)
    score = detector_score_config(config, model)
    context, train_config = DistributedContext(), config.train
    if launched_by_torchrun():
        context = init_from_env(train_config.device)
        train_config = dataclasses.replace(train_config, device=process_device(context, train_config.device))
        if not context.is_main:
            on_batch = on_epoch = None
            log = lambda line: None  # noqa: E731 - rank 0 speaks for the job
    members, results = [], []
    try:
        for member in range(config.ensemble):
            log(
                f"training {model['kind']} autoencoder"
                + (f" (ensemble member {member + 1}/{config.ensemble})" if config.ensemble > 1 else "")
                + f" on {len(data.train)} normal images ({len(data.validation)} held out), input {data.input_shape}"
                + (f", {context.world_size} processes" if context.enabled else "")
                + (", each mirrored at random (--augment flip)" if train_config.augment == "flip" else "")
            )
            trained, result = train_member(
                model,
                data,
                dataclasses.replace(train_config, seed=train_config.seed + member),
                on_batch,
                on_epoch,
                context,
                log,
            )
            members.append(trained)
            results.append(result)
    finally:
        barrier()
        shutdown()
    if not context.is_main:
        return None
    trained = Trained(model, score, members, results, context)
    if config.rotation:  # small: rank 0 trains it alone, after the autoencoders
        log(f"training the rotation classifier ({config.rotation_epochs} epochs) on {len(data.train)} normal images")
        trained.rotation, trained.rotation_record = train_rotation_head(
            data.train, data.validation, config.rotation_epochs, train_config.seed, train_config.device, log
        )
    return trained


def export_contents(
    config: DetectorConfig, trained: Trained, data: TrainingData, log: Callable[[str], None] = print
) -> BundleContents:
    """Export the scoring graph to ONNX (refused when torch and onnxruntime disagree), calibrate the threshold
    on the held-out normal images through that graph, and return the bundle's files and manifest."""
    graph = scoring_graph(trained.model, trained.score, trained.members, trained.rotation).cpu().eval()
    score = dict(trained.score)
    if isinstance(graph, ScoringGraph) and graph.knn:  # codes of the training split only: validation, test unseen
        train = torch.from_numpy(float_batch(data.train))
        score["references"] = graph.set_reference_codes(train, seed=config.train.seed)
    if standardised(graph):  # after the references: they change the score
        statistics = graph.set_standardisation(torch.from_numpy(float_batch(data.validation)))
        score["rotation"] = {**score["rotation"], "mean_std_on_held_out": statistics}
        log(
            "score standardisation on the held-out normal images: reconstruction mean {:.4g} std {:.4g}, "
            "rotation mean {:.4g} std {:.4g}".format(*statistics["reconstruction"], *statistics["rotation"])
        )
    with tempfile.TemporaryDirectory(prefix="aeguard-export-") as folder:
        onnx_path = Path(folder) / MODEL_NAME
        export_onnx(graph, data.input_shape, onnx_path)
        parity_source = data.evaluation.images if data.evaluation is not None else data.validation
        parity = parity_max_abs_diff(graph, onnx_path, parity_source[:PARITY_IMAGES])
        check_parity(parity)
        log(f"parity torch vs onnxruntime: max |score diff| {parity['max_abs_diff']:.3g}")
        # Calibrate on the exported graph itself, so the threshold matches what runtimes compute.
        val_scores = score_array(open_session(onnx_path), data.validation).astype(np.float32)
        model_bytes = onnx_path.read_bytes()
    weights, scores = io.BytesIO(), io.BytesIO()
    torch.save(graph.state_dict(), weights)
    np.save(scores, val_scores, allow_pickle=False)
    calibration = calibration_summary(val_scores, config.target_fpr)
    train_config = config.train
    manifest = {
        "name": None,  # the folder's name, set when the bundle is written
        "aeguard_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": preprocessing_of(data).spec(),
        "model": trained.model,
        "score": {**score, "higher_is_anomalous": True, "is_anomaly": "score > threshold"},
        "onnx": {"opset": OPSET, "input": INPUT_NAME, "outputs": list(OUTPUTS)},
        "data": data.source,
        "normal_classes": data.source.get("normal_classes"),
        "threshold": calibration["threshold"],
        "calibration": calibration,
        "metrics": None,
        "parity": parity,
        "training": {
            **_training_record(train_config, trained.results[0]),
            "processes": trained.context.world_size,
            "members": [
                _training_record(dataclasses.replace(train_config, seed=train_config.seed + i), r)
                for i, r in enumerate(trained.results[1:], start=1)
            ],
            "rotation": trained.rotation_record,
        },
    }
    files = {MODEL_NAME: model_bytes, WEIGHTS_NAME: weights.getvalue(), VALIDATION_SCORES_NAME: scores.getvalue()}
    return BundleContents(manifest, files)
