"""Consoles: progress and messages go to stderr so stdout can carry ``--json`` reports."""

from rich.console import Console

err_console = Console(stderr=True)
out_console = Console()
