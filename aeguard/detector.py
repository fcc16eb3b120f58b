"""`Detector`: an autoencoder anomaly detector in the shape scikit-learn and PyOD users know.

    det = Detector(model="conv", noise="erase", noise_level=0.25, score="blur", epochs=20, seed=0)
    det.fit(X_normal)            # an array, uint8 or float in [0, 1] (as_model_input's layouts), or a folder
    det.decision_function(X)     # scores, higher = more anomalous
    det.predict(X)               # bool, score > det.threshold_
    det.save("runs/x")           # the checksummed bundle `aeguard fit` writes

The constructor only stores its arguments; `fit` validates them (DetectorConfig) and sets the learned state,
whose names end in an underscore. Importing this module does not import torch: `fit` does.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aeguard.bundle import VALIDATION_SCORES_NAME
from aeguard.config import Activation, DetectorConfig, Model, Noise, NoiseKind, ScoreFunction, TrainConfig, choice
from aeguard.data.sources import (
    EvalSet,
    TrainingData,
    array_training_data,
    folder_training_data,
    labelled_folder,
    limit_images,
)
from aeguard.errors import UsageError
from aeguard.scoring.scorer import Scorer

REPORT_DIR = "report"


class Detector:
    """Fit on normal images only; score anything. Parameters as in `aeguard fit` (see DetectorConfig)."""

    def __init__(
        self,
        model: str = "conv",
        *,
        latent: int | None = None,
        hidden: tuple[int, ...] | None = None,
        activation: str | None = None,
        noise: str | Noise | None = None,
        noise_level: float | None = None,
        sparsity: float | None = None,
        k: int | None = None,
        contraction: float | None = None,
        beta: float | None = None,
        score: str | None = None,
        score_sigma: float | None = None,
        score_top: float | None = None,
        knn: int = 0,
        ensemble: int = 1,
        rotation: bool = False,
        rotation_epochs: int = 3,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        patience: int = 5,
        lr_schedule: str = "constant",
        augment: str = "none",
        device: str = "auto",
        precision: str = "auto",
        seed: int = 0,
        val_fraction: float = 0.1,
        target_fpr: float = 0.01,
        max_images: int | None = None,
        image_size: str | None = None,
        color: str | None = None,
        crop: str = "none",
        verbose: bool = False,
    ):
        self.model, self.latent, self.hidden, self.activation = model, latent, hidden, activation
        self.noise, self.noise_level = noise, noise_level
        self.sparsity, self.k, self.contraction, self.beta = sparsity, k, contraction, beta
        self.score, self.score_sigma, self.score_top, self.knn, self.ensemble = (
            score,
            score_sigma,
            score_top,
            knn,
            ensemble,
        )
        self.rotation, self.rotation_epochs = rotation, rotation_epochs
        self.epochs, self.batch_size, self.lr, self.patience = epochs, batch_size, lr, patience
        self.lr_schedule, self.augment = lr_schedule, augment
        self.device, self.seed, self.val_fraction, self.target_fpr = device, seed, val_fraction, target_fpr
        self.precision = precision
        self.max_images, self.image_size, self.verbose = max_images, image_size, verbose
        self.color, self.crop = color, crop  # for folders: grayscale or rgb [the images' own]; none or center

    @classmethod
    def from_config(
        cls,
        config: DetectorConfig,
        image_size: str | None = None,
        verbose: bool = False,
        color: str | None = None,
        crop: str = "none",
    ) -> Detector:
        noise = config.noise
        train = config.train
        return cls(
            model=config.model.value,
            latent=config.latent,
            hidden=config.hidden,
            activation=config.activation.value if config.activation else None,
            noise=None if noise is None else ("none" if noise.kind is None else noise.kind.value),
            noise_level=None if noise is None or noise.kind is None else noise.level,
            sparsity=config.sparsity,
            k=config.k,
            contraction=config.contraction,
            beta=config.beta,
            score=config.score.value if config.score else None,
            score_sigma=config.score_sigma,
            score_top=config.score_top,
            knn=config.knn,
            ensemble=config.ensemble,
            rotation=config.rotation,
            rotation_epochs=config.rotation_epochs,
            epochs=train.epochs,
            batch_size=train.batch_size,
            lr=train.learning_rate,
            patience=train.patience,
            lr_schedule=train.lr_schedule,
            augment=train.augment,
            device=train.device,
            precision=train.precision,
            seed=train.seed,
            val_fraction=config.val_fraction,
            target_fpr=config.target_fpr,
            max_images=config.max_images,
            image_size=image_size,
            color=color,
            crop=crop,
            verbose=verbose,
        )

    def get_params(self) -> dict:
        """The constructor's arguments (scikit-learn's convention)."""
        return {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}

    def config(self) -> DetectorConfig:
        """The parameters, checked: a UsageError names the first that is wrong."""
        if self.noise_level is not None and self.noise is None:
            raise UsageError("noise_level needs a noise kind (noise='erase', 'gaussian', 'mask' or 'salt-pepper')")
        if self.noise is None or isinstance(self.noise, Noise):
            noise = self.noise
        elif ":" in self.noise or self.noise == "none" or self.noise_level is None:
            noise = Noise.parse(self.noise)
        else:
            noise = Noise(choice(NoiseKind, "noise", self.noise), self.noise_level)
        train = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.lr,
            patience=self.patience,
            lr_schedule=self.lr_schedule,
            augment=self.augment,
            device=self.device,
            seed=self.seed,
            precision=self.precision,
        )
        return DetectorConfig(
            model=choice(Model, "model", self.model),
            latent=self.latent,
            hidden=self.hidden,
            activation=choice(Activation, "activation", self.activation),
            noise=noise,
            sparsity=self.sparsity,
            k=self.k,
            contraction=self.contraction,
            beta=self.beta,
            score=choice(ScoreFunction, "score", self.score),
            score_sigma=self.score_sigma,
            score_top=self.score_top,
            knn=self.knn,
            ensemble=self.ensemble,
            rotation=self.rotation,
            rotation_epochs=self.rotation_epochs,
            train=train,
            val_fraction=self.val_fraction,
            target_fpr=self.target_fpr,
            max_images=self.max_images,
        )

    def fit(self, X, y=None) -> Detector:
        """Train on normal images: an array (N, H, W), (N, C, H, W) or (N, H, W, C), uint8 or float in [0, 1],
        or a folder.

        A share (val_fraction) is held out for early stopping and to set the threshold; no anomalies are needed
        (`y` is ignored, as in PyOD). Nothing is written to disk.
        """
        config = self.config()
        if isinstance(X, (str, Path)):
            data = folder_training_data(
                Path(X), self.image_size, config.val_fraction, config.train.seed, self.color, self.crop
            )
        else:
            # a folder's options: an array is taken as it is, so asking to resize, recolour or crop it would be
            # ignored in silence
            asked = {
                "image_size": self.image_size,
                "color": self.color,
                "crop": None if self.crop == "none" else self.crop,
            }
            if any(value is not None for value in asked.values()):
                named = ", ".join(f"{name}={value!r}" for name, value in asked.items() if value is not None)
                raise UsageError(
                    f"{named} apply to a folder of images; an array is fitted at its own size and channels "
                    "(resize or convert it first, or pass its folder)"
                )
            data = array_training_data(X, config.val_fraction, config.train.seed)
        self.fit_training_data(limit_images(data, config.max_images, config.val_fraction))
        return self

    def fit_training_data(
        self,
        data: TrainingData,
        on_batch: Callable | None = None,
        on_epoch: Callable | None = None,
        log: Callable[[str], None] | None = None,
    ) -> bool:
        """Fit on prepared training data (what `fit` and `aeguard fit` share). False on a torchrun process
        other than rank 0, which trains its share but holds no model."""
        from aeguard.train.fit import export_contents, train_members

        config = self.config()
        log = log or (print if self.verbose else (lambda line: None))
        trained = train_members(config, data, on_batch, on_epoch, log)
        if trained is None:
            return False
        self._adopt(export_contents(config, trained, data, log))
        self.models_ = trained.members  # the torch modules, for analysis (benchmarks/score_variants.py)
        manifest = self.contents_.manifest
        self.training_ = manifest["training"]  # device, epochs run, best epoch, init seed, per member
        self.history_ = [member["history"] for member in [manifest["training"], *manifest["training"]["members"]]]
        self.input_shape_ = tuple(data.input_shape)
        return True

    def calibrate(self, X, target_fpr: float | None = None) -> Detector:
        """Set threshold_ again from normal images X (an array, as decision_function takes), taken as the images
        it will score are: the score that flags `target_fpr` (default: the fit's) of them. The model is
        unchanged; save() writes the new threshold. Returns the detector (aeguard calibrate, for a saved bundle)."""
        from aeguard.scoring.calibrate import recalibrated

        scorer = self._fitted()
        target = self.calibration_["target_fpr"] if target_fpr is None else target_fpr
        scores = scorer.decision_function(X)
        self._adopt(recalibrated(self.contents_, scores, target, f"an array of {len(scores)} images (calibrate)"))
        return self

    def _adopt(self, contents) -> None:
        """Take `contents` as this detector's bundle: its threshold, calibration and scorer."""
        self.contents_ = contents
        self.threshold_ = float(contents.manifest["threshold"])
        self.calibration_ = contents.manifest["calibration"]
        self.scorer_ = Scorer.from_contents(contents)

    def _fitted(self) -> Scorer:
        if not hasattr(self, "scorer_"):
            raise UsageError("this Detector is not fitted yet: call fit(X) first")
        return self.scorer_

    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores, float32 (N,); higher = more anomalous. X as in `fit`, but an array."""
        return self._fitted().decision_function(X)

    def predict(self, X) -> np.ndarray:
        """True where the score is above threshold_. A NaN score raises instead of reading as normal."""
        return self._fitted().predict(X)

    def anomaly_maps(self, X) -> np.ndarray:
        """Per-pixel error maps (N, C, H, W) of the score function: where the image differs from normal."""
        return self._fitted().anomaly_maps(X)

    def evaluate(self, X, y=None) -> dict:
        """ROC metrics (AUROC, AUPRC, TPR at 1 % FPR, ...) on labelled images, y = 1 for anomalies; no files.

        X may instead be a labelled folder, read as `aeguard evaluate --data` reads it (the MVTec AD layout, or
        normal/ + anomaly/), with no y: the metrics then add "per_defect" (image AUROC per defect type) and,
        where masks are given, "localization" (pixel AUROC, AUPRO)."""
        if isinstance(X, (str, Path)):
            from aeguard.report.labelled import labelled_metrics

            if y is not None:
                raise UsageError("a folder's labels come from its layout: pass the folder alone, or images and y")
            scorer = self._fitted()
            return labelled_metrics(scorer, labelled_folder(Path(X), scorer.preprocessing)).summary()
        if y is None:
            raise UsageError("evaluate(X, y) needs y, the labels (1 for anomalies), when X holds images")
        from aeguard.report.metrics import evaluate_scores

        return evaluate_scores(self.decision_function(X), np.asarray(y), self.threshold_)

    def report(self, folder: str | Path, X=None, y=None) -> dict:
        """Write report.json, report.md and plots into `folder` (matplotlib); with labelled images (y = 1 for
        anomalies) the ROC metrics and curves too. Returns the report."""
        from aeguard.report.evaluate import evaluate_bundle

        scorer = self._fitted()
        evaluation = None
        if X is not None:
            images, truth = scorer.model_input(X), np.asarray(y).astype(np.int64)
            if truth.shape != (len(images),):
                raise UsageError(f"y must hold one label per image: {len(images)} images, y of shape {truth.shape}")
            evaluation = EvalSet(images, truth, f"{len(images)} labelled images ({int(truth.sum())} anomalous)")
        scores = np.load(io.BytesIO(self.contents_.files[VALIDATION_SCORES_NAME]), allow_pickle=False)
        return evaluate_bundle(scorer, evaluation, Path(folder), bundle_label="a fitted Detector", val_scores=scores)

    def save(
        self, path: str | Path, force: bool = False, report: bool = False, evaluation: EvalSet | None = None
    ) -> dict:
        """Write the bundle folder (as `aeguard fit` does) and return its manifest. With `report`, BUNDLE/report/
        is written too (plots; metrics of `evaluation`, labelled images, when given, also kept in the manifest),
        before the finished folder is moved into place."""
        self._fitted()
        out = Path(path)

        def with_report(staging: Path, manifest: dict) -> dict:
            return self._write_report(staging, manifest, evaluation, out)

        return self.contents_.write(out, force, with_report if report else None)

    def _write_report(self, staging: Path, manifest: dict, evaluation: EvalSet | None, out: Path) -> dict:
        from aeguard.report.evaluate import evaluate_bundle

        if manifest["model"]["variational"]:  # the decoder alone is not in the ONNX graph, so torch draws these
            from aeguard.train.samples import write_prior_samples

            write_prior_samples(self.models_[0], staging / REPORT_DIR, seed=self.seed)
        result = evaluate_bundle(Scorer(staging), evaluation, staging / REPORT_DIR, bundle_label=out)
        if result["metrics"] is None:
            return manifest
        extra = {key: result[key] for key in ("per_defect", "localization", "threshold_warning") if key in result}
        return {**manifest, "metrics": result["metrics"], **extra}
