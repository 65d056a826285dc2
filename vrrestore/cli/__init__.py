"""The ``vrrestore`` command line. Each command lives in its own module and is registered here, by
hand, so importing the package never fills a registry. Training imports stay inside ``train``."""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import EXIT_INTERRUPTED, VRRestoreError
from ._console import err_console
from . import benchmark as _benchmark
from . import doctor as _doctor
from . import face as _face
from . import image as _image
from . import train as _train
from . import weights as _weights

app = typer.Typer(
    name="vrrestore",
    help="Blind face and photo restoration with Vector Regression (VR) over a VQGAN codebook.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vrrestore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Restore faces (`face`) and photos (`image`), measure models (`benchmark`), manage weights
    (`weights`) and train your own (`train`, `degrade`)."""


app.command("face")(_face.face)
app.command("image")(_image.image)
app.command("benchmark")(_benchmark.benchmark)
app.command("doctor")(_doctor.doctor)
app.command("degrade")(_train.degrade)
app.add_typer(_weights.app, name="weights")
app.add_typer(_train.app, name="train")


# typer bundles its own click; its ClickException is the base of typer.BadParameter.
_ClickException: type[Exception] = typer.BadParameter.__mro__[2]


def main() -> None:
    """Console entry point: VRRestoreError -> one red line and its exit code; Ctrl-C -> 130."""
    try:
        rv = app(standalone_mode=False)
    except VRRestoreError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except _ClickException as ex:
        ex.show()  # type: ignore[attr-defined]
        code = ex.exit_code  # type: ignore[attr-defined]
        # `vrrestore` / `vrrestore weights` with no arguments print help: not an error.
        sys.exit(0 if type(ex).__name__ == "NoArgsIsHelpError" else code)
    sys.exit(rv if isinstance(rv, int) else 0)
