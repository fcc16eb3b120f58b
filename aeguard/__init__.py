"""aeguard: anomaly detection from autoencoder reconstruction error."""

__version__ = "0.2.0"
