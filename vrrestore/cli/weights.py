"""PLACEHOLDER: replaced by the owner of this command."""

import typer

app = typer.Typer(help="Manage model weights.", no_args_is_help=True)
