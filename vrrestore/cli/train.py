"""PLACEHOLDER: replaced by the owner of this command."""

import typer

app = typer.Typer(help="Train models.", no_args_is_help=True)


def degrade() -> None:
    """Not yet implemented."""
    raise typer.Exit(1)
