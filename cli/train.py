"""``cloudcps train``."""

from __future__ import annotations

import click


@click.command()
def train() -> None:
    """Not yet available."""
    raise click.ClickException("cloudcps train is not available yet")
