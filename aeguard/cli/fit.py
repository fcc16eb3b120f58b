"""`aeguard fit`: train on normal images, calibrate, export the bundle, write the report."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from aeguard.config import Activation, DetectorConfig, Model, ScoreFunction, choice, photo_recipe

from .common import needs_extra, parse_int_list, reports_errors


class _Progress:
    """A live bar (loss, images/s) on a terminal; one line per epoch in logs and pipes."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.bar = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("epoch {task.fields[epoch]}/" + str(epochs)),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task("train", total=None, epoch=1, info="")
            self.bar.start()

    def on_batch(self, epoch: int, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, epoch=epoch)

    def on_epoch(self, record) -> None:
        from aeguard.train.loop import format_epoch

        line = format_epoch(record, self.epochs)
        if self.bar is not None:
            self.bar.console.print(line)
            self.bar.update(self.task, info=f"val {record.val_loss:.5f}  {record.images_per_second:,.0f} img/s")
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


DEFAULTS = DetectorConfig()  # every default below comes from the typed configuration, stated once
PHOTO = photo_recipe()  # ... and those of --data folders from the photo recipe
FLAGS = {"learning_rate": "--lr"}  # where a flag is not the parameter's name with dashes


def as_flag_error(exc):
    """A ConfigError in the words of the command line: `score_top must ...` becomes `--score-top must ...`."""
    from aeguard.errors import UsageError

    message, name = str(exc), exc.parameter
    if message.startswith(name):
        message = FLAGS.get(name, "--" + name.replace("_", "-")) + message[len(name) :]
    return UsageError(message)


@reports_errors
def fit(
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Bundle folder to write [default: runs/<dataset>-<normal>-<model>]."
    ),
    dataset: str = typer.Option("mnist", help="mnist or fashion-mnist."),
    normal: str = typer.Option("0", help="Normal classes: indices or names, comma-separated (0,1 / sneaker,sandal)."),
    data: Path | None = typer.Option(
        None,
        help="A folder of your own normal images instead of --dataset: the MVTec AD layout (DIR/train/good, "
        "DIR/test/<defect>, DIR/ground_truth) or any images, DIR/normal, DIR/anomaly and DIR/test kept for "
        "evaluation.",
        file_okay=False,
    ),
    data_dir: Path | None = typer.Option(
        None, help="Where the IDX data sets live [default: $AEGUARD_DATA_DIR, then the user cache]."
    ),
    image_size: str | None = typer.Option(
        None,
        help="Model input size for --data folders, 28 or HxW: images are resized "
        "[default: the first image's, scaled down to 256 px on its longer side when larger].",
    ),
    color: str | None = typer.Option(
        None, help="grayscale or rgb for --data folders [default: rgb when the training images are in colour]."
    ),
    crop: str = typer.Option("none", help="center: crop each image to the --image-size aspect ratio before resizing."),
    model: str | None = typer.Option(
        None,
        help="draem, dense, conv, denoising, sparse, k-sparse, contractive, vae or conv-vae (see docs/models.md) "
        f"[default: {PHOTO.model.value} for --data, {DEFAULTS.model.value} for --dataset].",
    ),
    latent: int | None = typer.Option(
        DEFAULTS.latent, help="Size of the code [default: 16 for conv models, 32 for dense ones]."
    ),
    hidden: str | None = typer.Option(
        None,
        help="Hidden widths (dense backbone, default 256,128) or conv channels (conv backbone, default 32,64), "
        "comma-separated.",
    ),
    activation: str | None = typer.Option(
        None, help="Hidden-layer activation: leaky-relu (slope 0.2) or relu [leaky-relu]."
    ),
    noise: str | None = typer.Option(
        None,
        help="Train on corrupted inputs: gaussian, mask, salt-pepper or erase, with :LEVEL "
        "(e.g. gaussian:0.2; 'none' turns the denoising model's default off).",
    ),
    sparsity: float | None = typer.Option(DEFAULTS.sparsity, help="L1 weight on the code [sparse: 1e-3, others 0]."),
    k: int | None = typer.Option(DEFAULTS.k, help="Keep only the k largest code units [k-sparse: 8]."),
    contraction: float | None = typer.Option(
        DEFAULTS.contraction, help="Weight of the encoder-Jacobian penalty [contractive: 1e-2, others 0]."
    ),
    beta: float | None = typer.Option(DEFAULTS.beta, help="KL weight of the variational models [1]."),
    score: str | None = typer.Option(
        None,
        help="Score function in the exported graph: mse, blur, ssim, elbo (variational models) "
        "[mse; draem: segmentation, its only one].",
    ),
    score_sigma: float | None = typer.Option(
        DEFAULTS.score_sigma, help="Gaussian width in pixels for --score blur (default 1) and ssim (1.5)."
    ),
    score_top: float | None = typer.Option(
        DEFAULTS.score_top,
        help="Score = mean of the largest Q share of the error map's pixels (e.g. 0.1), not of all of them [1].",
    ),
    knn: int = typer.Option(
        DEFAULTS.knn,
        help="Multiply the score by the mean distance from the image's latent code to its K nearest training codes "
        "(0: off).",
    ),
    ensemble: int = typer.Option(
        DEFAULTS.ensemble, help="Train this many independently seeded models and average their error maps."
    ),
    rotation: bool = typer.Option(
        DEFAULTS.rotation,
        "--rotation",
        help="Also train a classifier of the four quarter turns; the score adds its z-scored error to the "
        "z-scored reconstruction score (square images).",
    ),
    rotation_epochs: int = typer.Option(DEFAULTS.rotation_epochs, help="Epochs of the --rotation classifier."),
    max_images: int | None = typer.Option(
        DEFAULTS.max_images, help="Train on at most this many normal images (quick trials)."
    ),
    epochs: int | None = typer.Option(
        None, help=f"[{DEFAULTS.train.epochs}; {PHOTO.train.epochs} for draem, the --data default]"
    ),
    batch_size: int | None = typer.Option(
        None, help=f"[{DEFAULTS.train.batch_size}; {PHOTO.train.batch_size} for draem]"
    ),
    lr: float = typer.Option(DEFAULTS.train.learning_rate, help="Adam learning rate."),
    patience: int | None = typer.Option(
        None,
        help="Stop after this many epochs without a better validation loss "
        f"[{DEFAULTS.train.patience}; {PHOTO.train.patience} for draem].",
    ),
    # help in parentheses, not brackets: rich takes "[constant; ...]" for markup and drops it
    lr_schedule: str | None = typer.Option(
        None,
        help="constant, or cosine: the rate falls along half a cosine towards 0 at the last epoch "
        f"(default {DEFAULTS.train.lr_schedule}; {PHOTO.train.lr_schedule} for draem).",
    ),
    augment: str | None = typer.Option(
        None,
        help="none, or flip: each training image mirrored left-right and top-bottom at random, for textures "
        f"(default {DEFAULTS.train.augment}; {PHOTO.train.augment} for draem).",
    ),
    device: str = typer.Option(DEFAULTS.train.device, help="auto (CUDA when present), cpu or cuda."),
    precision: str = typer.Option(
        DEFAULTS.train.precision,
        help="The networks' arithmetic while training: fp32, bf16 (autocast; weights and losses stay fp32), or "
        "auto: bf16 for draem on a CPU with native bf16 (AMX or AVX512-BF16), where it trains faster with the "
        "same benchmark figures, fp32 elsewhere.",
    ),
    devices: int = typer.Option(
        1,
        min=1,
        help="Train in this many processes with DistributedDataParallel (one per GPU; gloo on CPU). "
        "torchrun works too.",
    ),
    seed: int = typer.Option(DEFAULTS.train.seed, help="Seed for the split, initialisation and batch order."),
    val_fraction: float = typer.Option(
        DEFAULTS.val_fraction, help="Share of the normal training images held out for validation and calibration."
    ),
    target_fpr: float = typer.Option(
        DEFAULTS.target_fpr, help="False-positive rate on held-out normal images that sets the threshold."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out."),
    no_download: bool = typer.Option(False, "--no-download", help="Never download a missing data set."),
) -> None:
    """Train an autoencoder on normal images, calibrate its threshold and export an ONNX bundle."""
    from aeguard.config import ConfigError, Noise, TrainConfig
    from aeguard.errors import UsageError

    try:
        from aeguard.report.evaluate import evaluate_bundle  # noqa: F401 - scikit-learn and matplotlib
        from aeguard.train.fit import export_contents  # noqa: F401 - torch and onnx, needed below
        from aeguard.train.job import FitOptions, run_fit
    except ModuleNotFoundError as exc:
        raise needs_extra("fit", exc) from None

    if model is None:
        model = (PHOTO if data is not None else DEFAULTS).model.value
    recipe = PHOTO if model == PHOTO.model.value else DEFAULTS
    epochs = recipe.train.epochs if epochs is None else epochs
    batch_size = recipe.train.batch_size if batch_size is None else batch_size
    patience = recipe.train.patience if patience is None else patience
    lr_schedule = recipe.train.lr_schedule if lr_schedule is None else lr_schedule
    augment = recipe.train.augment if augment is None else augment
    if out is None:
        source = data.name if data is not None else f"{dataset}-{normal.replace(',', '+').replace('/', '_')}"
        out = Path("runs") / f"{source}-{model}"
    try:
        config = DetectorConfig(
            model=choice(Model, "model", model),
            latent=latent,
            hidden=parse_int_list(hidden, "--hidden"),
            activation=choice(Activation, "activation", activation),
            noise=Noise.parse(noise) if noise is not None else None,
            sparsity=sparsity,
            k=k,
            contraction=contraction,
            beta=beta,
            score=choice(ScoreFunction, "score", score),
            score_sigma=score_sigma,
            score_top=score_top,
            knn=knn,
            ensemble=ensemble,
            rotation=rotation,
            rotation_epochs=rotation_epochs,
            train=TrainConfig(
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=lr,
                patience=patience,
                lr_schedule=lr_schedule,
                augment=augment,
                device=device,
                seed=seed,
                precision=precision,
            ),
            val_fraction=val_fraction,
            target_fpr=target_fpr,
            max_images=max_images,
        )
    except ConfigError as exc:
        raise as_flag_error(exc) from None
    options = FitOptions(
        out=out,
        config=config,
        dataset=dataset,
        normal=normal,
        data=data,
        data_dir=data_dir,
        image_size=image_size,
        color=color,
        crop=crop,
        force=force,
        allow_download=not no_download,
    )
    manifest: dict | None
    if devices > 1:
        from aeguard.bundle import check_out, read_manifest
        from aeguard.train.distributed import check_devices, launched_by_torchrun
        from aeguard.train.job import spawn_fit

        if launched_by_torchrun():
            raise UsageError("--devices spawns its own processes; under torchrun, leave it out")
        check_devices(devices, device)
        check_out(out, force)
        spawn_fit(options, devices)
        manifest = read_manifest(out)
    else:
        progress = _Progress(epochs)
        try:
            manifest = run_fit(
                options, progress.on_batch, progress.on_epoch, log=lambda line: print(line, file=sys.stderr, flush=True)
            )
        finally:
            progress.close()
        if manifest is None:  # a torchrun worker other than rank 0: rank 0 reports
            return
    metrics = manifest.get("metrics")
    print(f"bundle:    {out}")
    print(f"threshold: {manifest['threshold']:.6g} (target FPR {target_fpr})")
    if metrics:
        print(
            f"AUROC:     {metrics['auroc']:.4f}   AUPRC: {metrics['auprc']:.4f}   "
            f"TPR@1%FPR: {metrics['tpr_at_fpr_1pct']:.4f}"
        )
    local = (manifest.get("localization") or {}) if metrics else {}
    if local:
        print(f"pixel AUROC: {local['pixel_auroc']:.4f}   AUPRO: {local['aupro']:.4f}")
    print(f"report:    {out / 'report' / 'report.md'}")
    if metrics and manifest.get("threshold_warning"):
        print(f"warning: {manifest['threshold_warning']}", file=sys.stderr)
