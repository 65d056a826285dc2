"""PLACEHOLDER: replaced by the owner of this command."""

import typer


def face() -> None:
    """Not yet implemented."""
    raise typer.Exit(1)
