"""``cloudcps predict``."""

from __future__ import annotations

import click


@click.command()
def predict() -> None:
    """Not yet available."""
    raise click.ClickException("cloudcps predict is not available yet")
