"""Command line interface of cloudcps (installed as ``cloudcps.cli``)."""
