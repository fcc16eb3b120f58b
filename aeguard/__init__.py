"""aeguard: anomaly detection from autoencoder reconstruction error."""

__version__ = "0.1.0"
