"""The ``vrrestore`` command line. Each command lives in its own module and is registered here, by
hand, so importing the package never fills a registry. Training imports stay inside ``train``."""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType

import typer
from rich.markup import escape

from .. import __version__
from ..errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, Terminated, VRRestoreError
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


app.command("face", epilog=EXIT_CODES_HELP)(_face.face)
app.command("image", epilog=EXIT_CODES_HELP)(_image.image)
app.command("benchmark")(_benchmark.benchmark)
app.command("doctor")(_doctor.doctor)
app.command("degrade")(_train.degrade)
app.add_typer(_weights.app, name="weights")
app.add_typer(_train.app, name="train")


# typer bundles its own click; its ClickException is the base of typer.BadParameter.
_ClickException: type[Exception] = typer.BadParameter.__mro__[2]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (kill, systemd, a scheduler) -> an interrupt where the program is, so temp files and
    partial outputs are cleaned up as for Ctrl-C, and the exit code is 130."""
    raise Terminated()


def _json_flag_command(argv: list[str]) -> str | None:
    """The command path (e.g. "face", "weights list") if ``argv`` asks for --json and on that command
    --json is a flag (a report on stdout); else None."""
    import typer.main

    args = argv[: argv.index("--")] if "--" in argv else argv
    if "--json" not in args:
        return None
    group = typer.main.get_command(app)
    names: list[str] = []
    cmd = group
    for word in args:
        sub = getattr(cmd, "commands", {}).get(word) if hasattr(cmd, "commands") else None
        if sub is None:
            if names:
                break
            continue
        names.append(word)
        cmd = sub
    if not names or cmd is group:
        return None
    flag = next((p for p in getattr(cmd, "params", []) if "--json" in getattr(p, "opts", [])), None)
    return " ".join(names) if flag is not None and getattr(flag, "is_flag", False) else None


def _json_safety_net(command: str | None, code: int, error: str | None, started: float, reports_before: int) -> None:
    """Every exit path with --json prints exactly one JSON document: if the command failed before it
    could write its own report (a bad option, no device), write the same shape here."""
    from ..batch import json_reports_written

    if command is None or code == 0 or json_reports_written() > reports_before:
        return
    report = {
        "task": command, "exit_code": code, "error": error, "seconds": round(time.monotonic() - started, 3),
        "summary": {"ok": 0, "skipped": 0, "failed": 0, "interrupted": 0, "not_run": 0}, "files": [],
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    sys.stdout.flush()


def main() -> None:
    """Console entry point: VRRestoreError -> one red line and its exit code; Ctrl-C and SIGTERM -> 130;
    with --json, one JSON document on stdout whatever happens."""
    from ..batch import json_reports_written

    started, reports_before = time.monotonic(), json_reports_written()
    json_command = _json_flag_command(sys.argv[1:])
    error: str | None = None
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    try:
        rv = app(standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except VRRestoreError as err:
        error = " ".join(str(err).split())
        # escaped: messages quote commands such as `pip install "vrrestore[peers]"`, which rich would read as markup
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        code = err.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("[yellow]interrupted[/yellow]")
        error, code = "interrupted", EXIT_INTERRUPTED
    except typer.Exit as ex:
        code = ex.exit_code
    except _ClickException as ex:
        ex.show()  # type: ignore[attr-defined]
        error = ex.format_message()  # type: ignore[attr-defined]
        # `vrrestore` / `vrrestore weights` with no arguments print help: not an error.
        code = 0 if type(ex).__name__ == "NoArgsIsHelpError" else ex.exit_code  # type: ignore[attr-defined]
    _json_safety_net(json_command, code, error, started, reports_before)
    sys.exit(code)
