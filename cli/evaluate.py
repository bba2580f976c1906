"""``cloudcps evaluate``."""

from __future__ import annotations

import click


@click.command()
def evaluate() -> None:
    """Not yet available."""
    raise click.ClickException("cloudcps evaluate is not available yet")
