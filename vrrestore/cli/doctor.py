"""PLACEHOLDER: replaced by the owner of this command."""

import typer


def doctor() -> None:
    """Not yet implemented."""
    raise typer.Exit(1)
