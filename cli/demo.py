"""``cloudcps demo``."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Not yet available."""
    raise click.ClickException("cloudcps demo is not available yet")
