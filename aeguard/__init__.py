"""aeguard: anomaly detection from autoencoder reconstruction error.

    from aeguard import Detector, Bundle
    det = Detector(model="conv", noise="erase", noise_level=0.25, score="blur").fit(X_normal)
    det.predict(X)                              # bool, score > det.threshold_
    det.save("runs/x")
    scorer = Bundle.load("runs/x").scorer()     # torch-free: decision_function / predict / anomaly_maps

The names are imported on first use, so `import aeguard` itself stays light (no numpy, onnxruntime or torch).
"""

__version__ = "0.3.0"

__all__ = ["Bundle", "Detector", "DetectorConfig", "__version__"]

_EXPORTS = {"Detector": "aeguard.detector", "Bundle": "aeguard.scoring.scorer", "DetectorConfig": "aeguard.config"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aeguard' has no attribute {name!r}")
