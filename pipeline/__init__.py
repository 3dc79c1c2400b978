"""rsvae: remote-sensing anomaly detection with a variational autoencoder.

The import package is ``pipeline``; every CLI command is a thin wrapper over a function here.
"""

__version__ = "0.1.0"
