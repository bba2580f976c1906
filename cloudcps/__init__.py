"""cloudcps: cloud and cloud-shadow masking with Cross Pseudo Supervision."""

__version__ = "0.1.0"
