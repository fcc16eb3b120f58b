"""Typed configuration of a detector: the one place where model, corruption, score and training options are
checked. Standard library only, so the CLI and a notebook can build and validate one without torch.

`DetectorConfig` holds what a user chooses; `model_config` and `score_config` turn it into the plain dicts
the manifest records and the torch side builds from (a bundle is rebuilt from those dicts alone).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar, overload

from aeguard.errors import UsageError


class ConfigError(UsageError):
    """A configuration value that is wrong; `parameter` names it, and a message about it starts with that name
    (so the CLI can say `--score-top` where the library says `score_top`)."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


Choice = TypeVar("Choice", bound=StrEnum)


@overload
def choice(kind: type[Choice], name: str, value: None) -> None: ...
@overload
def choice(kind: type[Choice], name: str, value: Choice | str) -> Choice: ...
def choice(kind, name, value):
    """`value` as a member of the enum `kind` (a string is a member's value; None stays None); a ConfigError
    names `name` and the choices otherwise."""
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ConfigError(name, f"unknown {name} {value!r}; choose one of {choices}") from None


class Model(StrEnum):
    DENSE = "dense"
    CONV = "conv"
    DENOISING = "denoising"  # conv, trained on corrupted inputs to restore the clean image
    SPARSE = "sparse"  # dense, L1 penalty on the code
    K_SPARSE = "k-sparse"  # dense, keeps the top-k code units
    CONTRACTIVE = "contractive"  # dense, penalty on the encoder's Jacobian
    VAE = "vae"  # dense, variational; the exported graph decodes the mean code
    CONV_VAE = "conv-vae"
    DRAEM = "draem"  # restore synthetic defects + segment them (train/draem.py): localizes, for photos


# model -> backbone. The training terms live in the model config's "training" entry.
MODEL_KINDS = {
    "dense": "dense",
    "conv": "conv",
    "denoising": "conv",
    "sparse": "dense",
    "k-sparse": "dense",
    "contractive": "dense",
    "vae": "dense",
    "conv-vae": "conv",
    "draem": "draem",
}
VARIATIONAL = frozenset({"vae", "conv-vae"})


class Activation(StrEnum):
    LEAKY_RELU = "leaky-relu"  # slope 0.2
    RELU = "relu"


# LeakyReLU (slope 0.2) is the default: on the one-class benchmark it raised the plain conv AE's mean AUROC
# on MNIST from 96.15 to 96.53 (3 seeds) and the dense one's from 96.22 to 96.53, and a unit it drives
# negative still has a gradient, where a ReLU's would die for good. Bundles written before the option
# existed have no key: they used ReLU.
DEFAULT_ACTIVATION = "leaky-relu"


class NoiseKind(StrEnum):
    GAUSSIAN = "gaussian"  # level: standard deviation
    MASK = "mask"  # level: share of pixels zeroed
    SALT_PEPPER = "salt-pepper"  # level: share of pixels set to 0 or 1
    ERASE = "erase"  # level: side of the one zeroed square, as a share of the image side


NOISE_KINDS = tuple(kind.value for kind in NoiseKind)
DEFAULT_NOISE_LEVEL = 0.2


@dataclass(frozen=True)
class Noise:
    """A corruption applied to the training inputs; `Noise.OFF` turns a model's default corruption off."""

    kind: NoiseKind | None
    level: float = DEFAULT_NOISE_LEVEL

    def __post_init__(self):
        if self.kind is None:
            return
        try:
            object.__setattr__(self, "kind", NoiseKind(self.kind))
        except ValueError:
            raise ConfigError("noise", f"noise must be one of {', '.join(NOISE_KINDS)}, got {self.kind!r}") from None
        if isinstance(self.level, bool) or not (isinstance(self.level, (int, float)) and 0.0 < self.level <= 1.0):
            raise ConfigError("noise_level", f"noise_level must satisfy 0 < level <= 1, got {self.level!r}")

    @classmethod
    def parse(cls, text: str) -> Noise:
        """'gaussian:0.2', 'erase' (level 0.2) or 'none'."""
        if text == "none":
            return NOISE_OFF
        kind, _, level_text = text.partition(":")
        try:
            level = float(level_text) if level_text else DEFAULT_NOISE_LEVEL
        except ValueError:
            level = math.nan
        if kind not in NOISE_KINDS or not 0.0 < level <= 1.0:
            raise UsageError(
                f"--noise must be KIND[:LEVEL] with KIND one of {', '.join(NOISE_KINDS)} "
                f"and 0 < LEVEL <= 1, got {text!r}"
            )
        return cls(NoiseKind(kind), level)

    def __str__(self) -> str:
        return "none" if self.kind is None else f"{self.kind.value}:{self.level:g}"


NOISE_OFF = Noise(None, 0.0)


def parse_noise(text: str | None) -> tuple[str, float] | None:
    """A model config's "noise" entry ('gaussian:0.2') -> ('gaussian', 0.2), what the corruption code takes."""
    if not text or text == "none":
        return None
    noise = Noise.parse(text)
    return None if noise.kind is None else (noise.kind.value, noise.level)


class ScoreFunction(StrEnum):
    MSE = "mse"
    BLUR = "blur"
    SSIM = "ssim"
    ELBO = "elbo"
    SEGMENTATION = "segmentation"  # draem: the predicted defect probability


SCORE_FUNCTIONS = tuple(function.value for function in ScoreFunction)
DEFINITIONS = {
    "mse": "mean over pixels of (image - reconstruction)^2",
    "blur": "mean over pixels of (gaussian_blur(image - reconstruction, sigma))^2",
    "ssim": "mean over pixels of 1 - SSIM(image, reconstruction), gaussian window sigma",
    "elbo": "mean over pixels of (image - reconstruction)^2 + beta * KL(q(z|x) || N(0, I)) / pixels, at the mean code",
    "segmentation": "max over pixels of the defect probability map",
}
# DRAEM's image score is the max of its map after a 21 x 21 mean (at 256 px). On a development folder of the
# brick texture (benchmarks/texture_defects.py with --seed 1, not the benchmark's test images) the plain max
# won: image AUROC 0.962 against 0.952 / 0.930 / 0.911 / 0.893 / 0.871 for 3 / 5 / 7 / 11 / 21 px means, as
# a wide mean erases a 2-pixel scratch. A bundle records its pool; the graph applies it when above 1.
SEGMENTATION_POOL = 1


def _positive_int(name: str, value, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ConfigError(
            name, f"{name} must be {'a non-negative' if allow_zero else 'a positive'} integer, got {value!r}"
        )


def _number(
    name: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False, what: str = ""
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(name, f"{name} must {what or 'lie in ' + interval}, got {value!r}")


LR_SCHEDULES = ("constant", "cosine")
AUGMENTS = ("none", "flip")  # aeguard/train/augment.py
PRECISIONS = ("auto", "fp32", "bf16")  # the networks' arithmetic while training: aeguard/train/precision.py


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3
    patience: int = 5  # epochs without a better validation loss before stopping
    lr_schedule: str = "constant"  # or "cosine": the rate falls along half a cosine towards 0 at the last epoch
    augment: str = "none"  # or "flip": each training image mirrored at random (aeguard/train/augment.py)
    device: str = "auto"  # auto (CUDA when torch sees it), cpu, cuda or cuda:N
    seed: int = 0  # the split, initialisation, batch order and corruption
    precision: str = "auto"  # or fp32, bf16; auto: bf16 autocast where measured faster (train/precision.py)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            _positive_int(name, getattr(self, name))
        _number("learning_rate", self.learning_rate, 0.0, math.inf, low_open=True, high_open=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                "lr_schedule", f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.augment not in AUGMENTS:
            raise ConfigError("augment", f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.device, str) or (
            self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:")
        ):
            raise ConfigError("device", f"device must be auto, cpu or cuda, got {self.device!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("seed", f"seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything a detector is fitted with. Strings are accepted for the enums (`model="conv"`)."""

    model: Model = Model.CONV
    latent: int | None = None  # code size [16 for conv backbones, 32 for dense ones]
    hidden: tuple[int, ...] | None = None  # dense widths [256, 128] or conv channels [32, 64]
    activation: Activation | None = None  # [leaky-relu]
    noise: Noise | None = None  # corruption while training [the model's: gaussian:0.2 for denoising, else none]
    sparsity: float | None = None  # L1 weight on the code [sparse: 1e-3, others 0]
    k: int | None = None  # keep the k largest code units [k-sparse: 8]
    contraction: float | None = None  # encoder-Jacobian penalty [contractive: 1e-2, others 0]
    beta: float | None = None  # KL weight of the variational models [1]
    score: ScoreFunction | None = None  # [mse; segmentation for draem, the only score it has]
    score_sigma: float | None = None  # Gaussian width in pixels for blur [1] and ssim [1.5]
    score_top: float | None = None  # the score averages the largest share of the error map [1: all of it]
    knn: int = 0  # > 0: the score times the mean latent distance to the knn nearest training codes
    ensemble: int = 1  # independently seeded members whose error maps are averaged
    rotation: bool = False  # add a rotation-prediction classifier's score (train/rotation.py), z-scored
    rotation_epochs: int = 3  # the classifier's epochs; the one with the best held-out normal score is kept
    train: TrainConfig = field(default_factory=TrainConfig)
    val_fraction: float = 0.1  # held out from the normal training images for early stopping and calibration
    target_fpr: float = 0.01  # the threshold flags at most this share of the held-out normal images
    max_images: int | None = None  # cap on the normal training images, for quick trials

    def __post_init__(self):
        # strings are accepted at run time for the callers without a type checker (`model="conv"`)
        for name, kind in {"model": Model, "activation": Activation, "score": ScoreFunction}.items():
            object.__setattr__(self, name, choice(kind, name, getattr(self, name)))
        if isinstance(self.noise, str):
            object.__setattr__(self, "noise", Noise.parse(self.noise))
        if self.hidden is not None:
            if isinstance(self.hidden, (str, bytes)) or not self.hidden:
                raise ConfigError("hidden", f"hidden must be a sequence of positive integers, got {self.hidden!r}")
            for width in self.hidden:
                _positive_int("hidden", width)
            object.__setattr__(self, "hidden", tuple(self.hidden))
        for name in ("latent", "k", "max_images"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.max_images is not None and self.max_images < 2:
            raise ConfigError("max_images", f"max_images must be at least 2, got {self.max_images}")
        for name in ("sparsity", "contraction", "beta"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), 0.0, math.inf, high_open=True, what="not be negative")
        if self.score_sigma is not None:
            _number("score_sigma", self.score_sigma, 0.0, math.inf, low_open=True, high_open=True, what="be positive")
        if self.score_top is not None:
            _number("score_top", self.score_top, 0.0, 1.0, low_open=True, what="be a share of the pixels, 0 < Q <= 1")
        _positive_int("knn", self.knn, allow_zero=True)
        _positive_int("ensemble", self.ensemble)
        if not isinstance(self.rotation, bool):
            raise ConfigError("rotation", f"rotation must be True or False, got {self.rotation!r}")
        _positive_int("rotation_epochs", self.rotation_epochs)
        _number("val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        _number("target_fpr", self.target_fpr, 0.0, 1.0, high_open=True)
        variational = self.model.value in VARIATIONAL
        if self.k is not None and variational:
            raise ConfigError("k", "k does not apply to the variational models: their code is a distribution")
        if self.beta and not variational:
            raise ConfigError("beta", "beta applies to the variational models (vae, conv-vae)")
        if self.score is ScoreFunction.ELBO and not variational:
            raise ConfigError("score", "score elbo needs a variational model (vae, conv-vae)")
        draem = self.model is Model.DRAEM
        if (self.score is ScoreFunction.SEGMENTATION) != draem and self.score is not None:
            raise ConfigError("score", "score segmentation is the draem model's, and the only score it has")
        if draem:
            for name in ("k", "sparsity", "contraction", "beta", "score_top", "noise"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, f"{name} does not apply to the draem model")
            for name in ("knn", "rotation"):  # off when 0 / False rather than None
                if getattr(self, name):
                    raise ConfigError(name, f"{name} does not apply to the draem model: its score is its defect map's")
        latent = self.latent or (32 if MODEL_KINDS[self.model.value] == "dense" else 16)
        k = self.k if self.k is not None else (8 if self.model is Model.K_SPARSE else None)
        if k is not None and k > latent:
            raise ConfigError("k", f"k {k} exceeds the code size (latent) {latent}")

    def replace(self, **changes) -> DetectorConfig:
        return dataclasses.replace(self, **changes)


PHOTO_EPOCHS = 50


def photo_recipe() -> DetectorConfig:
    """What `aeguard fit --data DIR` trains when no model is named: the recipe that won the texture benchmark
    (benchmarks/textures.py). The MNIST defaults (DetectorConfig()) stay those of the one-class benchmark."""
    train = TrainConfig(epochs=PHOTO_EPOCHS, batch_size=16, patience=10, lr_schedule="cosine")
    return DetectorConfig(model=Model.DRAEM, train=train)


# Decompression-bomb guard of aeguard score: images with more pixels are refused from their header.
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class ScoreOptions:
    """How `aeguard score` (the batch engine) runs."""

    batch_size: int = 64  # images per onnxruntime call
    workers: int = 0  # decoding processes; 0 = one per core
    prefetch_batches: int = 4  # batches decoded ahead of the scorer: bounds memory
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_maps: Path | None = None  # write a heat map of every anomaly here

    def __post_init__(self):
        _positive_int("batch_size", self.batch_size)
        _positive_int("workers", self.workers, allow_zero=True)
        _positive_int("prefetch_batches", self.prefetch_batches)
        _positive_int("max_pixels", self.max_pixels)


# The conv backbone grows with the image: stride-2 stages until the feature map is at most 8 pixels across,
# channels doubling from 32 with depth up to 256. At 28 px that is MNIST's measured [32, 64] (7 x 7). From
# 64 px up the code keeps its spatial layout (`latent` channels on that 8 x 8 grid): a 16-unit dense code
# cannot hold the structure of a 128 px photo (it reconstructed the mean image there).
BOTTLENECK_SIDE = 8
MAX_CONV_CHANNELS = 256
SPATIAL_FROM = 64
DRAEM_CODE_CHANNELS = 64
DRAEM_CONV_PADDING = "replicate"  # setting_trial_replicate: brick 0.932 -> 0.954 over two seeds
# "difference" (draem.SegmenterInput) gained on the development folders (setting_trial_difference) and gave
# the texture benchmark 0.979 against 0.983, brick up and histology down (textures.md, draem-difference): not kept
DRAEM_SEGMENTER_INPUT = "pair"


def conv_channels_for(height: int, width: int) -> list[int]:
    stages = max(1, math.ceil(math.log2(max(height, width) / BOTTLENECK_SIDE)))
    return [min(MAX_CONV_CHANNELS, 32 * 2**i) for i in range(stages)]


def draem_segmenter_stages(restorer_stages: int) -> int:
    """The draem segmenter's depth: its image size's restorer depth, kept between 2 and 4 stages."""
    return max(2, min(4, restorer_stages))


def default_config(kind: str, channels: int, height: int, width: int) -> dict:
    """The model config dict of a model kind with every option at its default."""
    if kind not in MODEL_KINDS:
        raise UsageError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    backbone = MODEL_KINDS[kind]
    config: dict = {
        "kind": kind,
        "backbone": backbone,
        "channels": channels,
        "height": height,
        "width": width,
        "activation": DEFAULT_ACTIVATION,
    }
    if backbone == "dense":
        config.update(hidden=[256, 128], latent=32)
    elif kind == "draem":
        restorer = [min(128, c // 2) for c in conv_channels_for(height, width)]
        config.update(conv_channels=restorer, latent=DRAEM_CODE_CHANNELS, spatial_code=True)
        config["segmenter_stages"] = draem_segmenter_stages(len(restorer))  # by the image size, not --hidden
        config["conv_padding"] = DRAEM_CONV_PADDING
        config["segmenter_input"] = DRAEM_SEGMENTER_INPUT
    else:
        # A 16-unit code measured better than 8 or 32 on the one-class benchmark (benchmarks/one_class.py)
        config.update(
            conv_channels=conv_channels_for(height, width), latent=16, spatial_code=min(height, width) >= SPATIAL_FROM
        )
    config["variational"] = kind in VARIATIONAL
    config["k_sparse"] = 8 if kind == "k-sparse" else None
    config["training"] = {
        "noise": "gaussian:0.2" if kind == "denoising" else None,
        "l1": 1e-3 if kind == "sparse" else 0.0,
        "contraction": 1e-2 if kind == "contractive" else 0.0,
        "beta": 1.0 if config["variational"] else 0.0,
    }
    return config


def model_config(config: DetectorConfig, input_shape: tuple[int, int, int]) -> dict:
    """The manifest's model entry for `config` on inputs of `input_shape` (C, H, W)."""
    model = default_config(config.model.value, *input_shape)
    if config.latent is not None:
        model["latent"] = config.latent
    if config.hidden:
        model["hidden" if model["backbone"] == "dense" else "conv_channels"] = list(config.hidden)
    if config.activation is not None:
        model["activation"] = config.activation.value
    if config.k is not None:
        model["k_sparse"] = config.k
    terms = model["training"]
    if config.noise is not None:
        terms["noise"] = None if config.noise.kind is None else str(config.noise)
    for key, value in (("l1", config.sparsity), ("contraction", config.contraction), ("beta", config.beta)):
        if value is not None:
            terms[key] = float(value)
    model["ensemble"] = config.ensemble
    if config.rotation and input_shape[1] != input_shape[2]:
        raise ConfigError(
            "rotation",
            f"rotation needs square images (a quarter turn must keep the shape); these are {input_shape[1]} x "
            f"{input_shape[2]}: give a square --image-size or --crop center",
        )
    return model


def score_config(
    function: str,
    sigma: float | None = None,
    beta: float = 1.0,
    knn: int = 0,
    top: float | None = None,
    rotation_epochs: int | None = None,
) -> dict:
    """The manifest's score entry: the function, its parameters and a readable definition."""
    if function not in SCORE_FUNCTIONS:
        raise UsageError(f"--score must be one of {', '.join(SCORE_FUNCTIONS)}, got {function!r}")
    if knn < 0:
        raise UsageError(f"--knn must be 0 (off) or a positive number of neighbours, got {knn}")
    if top is not None and not 0.0 < top <= 1.0:
        raise UsageError(f"--score-top must be a share of the pixels, 0 < Q <= 1, got {top}")
    config: dict = {"function": function, "definition": DEFINITIONS[function]}
    if top is not None and top < 1.0:  # 1 is the plain mean: bundles keep the key only when it changes the score
        config["top"] = float(top)
        config["definition"] = config["definition"].replace(
            "mean over pixels of", f"mean over the largest {top:.4g} share of pixels of"
        )
    if knn:
        config["knn"] = int(knn)
        config["definition"] += (
            f", times the mean distance from the latent code to its {knn} nearest latent codes of the training images"
        )
    if rotation_epochs:
        # the means and standard deviations are filled in at export, measured on the held-out normal images
        config["rotation"] = {"epochs": int(rotation_epochs)}
        config["definition"] = (
            f"z-score of ({config['definition']}) plus the z-score of the rotation classifier's summed negative "
            "log-likelihood of the right rotation over the four quarter turns; both standardised by their mean "
            "and standard deviation on the held-out normal images"
        )
    if function in ("blur", "ssim"):
        config["sigma"] = float(sigma if sigma is not None else (1.0 if function == "blur" else 1.5))
        if config["sigma"] <= 0:
            raise UsageError(f"--score-sigma must be positive, got {sigma}")
    if function == "elbo":
        config["beta"] = float(beta)
    if function == "segmentation":
        config["pool"] = SEGMENTATION_POOL
    return config


def detector_score_config(config: DetectorConfig, model: dict) -> dict:
    """The manifest's score entry for `config` and the model entry built from it."""
    beta = model["training"]["beta"] if model["variational"] else 1.0
    function = config.score or (ScoreFunction.SEGMENTATION if config.model is Model.DRAEM else ScoreFunction.MSE)
    rotation_epochs = config.rotation_epochs if config.rotation else None
    return score_config(function.value, config.score_sigma, beta, config.knn, config.score_top, rotation_epochs)
