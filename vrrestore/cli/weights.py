"""``vrrestore weights``: list, download, verify and locate model weights, import foreign ones, write model cards.

Every failure is a WeightsError (exit 3) or UsageError (exit 2) raised to ``cli.main``, never a print.
Tables and results go to stdout; downloads report progress on stderr (huggingface_hub's bars).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import hub
from .. import weights as W
from ..errors import UsageError, WeightsError
from ._console import err_console, out_console
from ._options import DtypeChoice, HeadChoice

app = typer.Typer(
    help="List, download, verify and locate model weights; import foreign checkpoints; write Hub model cards.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

_STATUS_STYLE = {"bundled": "green", "cached": "green", "invalid": "red", "remote": "yellow", "unpublished": "red"}


def _entry(name: str) -> W.WeightEntry:
    registry = W.load_registry()
    if name not in registry:
        raise UsageError(W.unknown_name_message(name, registry))
    return registry[name]


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array (one object per model) instead of a table.")] = False,
) -> None:
    """Show every registry model: task, size, licence and where it is (bundled / cached / invalid / remote /
    unpublished). bundled and cached mean the file passes every check loading makes; invalid means a
    local file is there but loading would refuse it (`vrrestore weights verify NAME` says why)."""
    states = [(e, *W.entry_state(e)) for e in W.load_registry().values()]
    rows = [(e, status) for e, status, _ in states]
    if as_json:
        out = []
        for entry, status, problem in states:
            copies = W.local_copies(entry)
            out.append({**entry.to_dict(), "availability": status, "problem": problem,
                        "path": str(copies[0][1]) if copies else None})
        typer.echo(json.dumps(out, indent=2))
        return
    table = Table(title="vrrestore weights", title_justify="left")
    for col in ("name", "task", "model", "size", "licence", "status"):
        table.add_column(col, no_wrap=col in ("name", "status"))
    for entry, status in rows:
        name = entry.name + (" (default)" if entry.default else "")
        table.add_row(
            name, entry.task, f"{entry.preset} / {entry.head}", _size(entry.size_bytes), entry.license or "-",
            f"[{_STATUS_STYLE[status]}]{status}[/]",
        )
    out_console.print(table)
    if any(status == "unpublished" for _, status in rows):
        out_console.print(
            "unpublished = no trained weights exist yet; pass --model PATH to your own checkpoint.", highlight=False
        )
    for entry, status, problem in states:
        if status == "invalid":
            out_console.print(f"[red]invalid[/] {entry.name}: {problem}", highlight=False, soft_wrap=True)


@app.command("download")
def download(
    names: Annotated[list[str], typer.Argument(help="Registry names (see `vrrestore weights list`).")],
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if the Hub cache has the file (repairs a damaged cache).")] = False,
) -> None:
    """Fetch models into the Hub cache (pinned revision) and check their sha256, e.g. before going offline."""
    entries = [_entry(n) for n in names]
    for entry in entries:
        if not entry.published:
            raise WeightsError(W.unpublished_message(entry, as_default=False))
        if entry.repo_id is None or entry.revision is None or entry.filename is None:
            path = W.resolve_entry(entry, download=False)
            out_console.print(f"{entry.name}: ships inside the package ({path}); nothing to download", highlight=False)
            continue
        path = hub.download_file(entry.repo_id, entry.filename, entry.revision, name=entry.name, force=force)
        W.check_file(entry, path, "hub-cache")
        out_console.print(f"[green]ok[/] {entry.name} sha256 verified: {path}", highlight=False)


@app.command("verify")
def verify(
    target: Annotated[Optional[str], typer.Argument(help="A registry name or a .safetensors path. Default: every local copy of every registry model.")] = None,
) -> None:
    """Re-hash local weight files against the registry (exit 3 on any mismatch; nothing is deleted)."""
    registry = W.load_registry()
    if target is not None and target not in registry and (W.looks_like_path(target) or Path(target).exists()):
        _verify_path(Path(target))
        return
    entries = [_entry(target)] if target is not None else list(registry.values())
    table = Table(title_justify="left")
    for col in ("name", "where", "result", "path"):
        table.add_column(col, no_wrap=col != "path")
    failures: list[str] = []
    checked = 0
    for entry in entries:
        for where, path in W.local_copies(entry):
            checked += 1
            if entry.sha256 is None:
                table.add_row(entry.name, where, "[yellow]no registry hash[/]", str(path))
                continue
            try:
                W.check_file(entry, path, where)
            except WeightsError as err:
                failures.append(str(err))
                table.add_row(entry.name, where, "[red]MISMATCH[/]", str(path))
            else:
                table.add_row(entry.name, where, "[green]ok[/]", str(path))
    if checked == 0:
        if target is not None:
            entry = entries[0]
            if not entry.published:
                raise WeightsError(W.unpublished_message(entry, as_default=False))
            raise WeightsError(f"{entry.name} has no local copy to verify; run `vrrestore weights download {entry.name}`")
        out_console.print("no local weight files to verify", highlight=False)
        return
    out_console.print(table)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise WeightsError(failures[0] + more)


def _verify_path(path: Path) -> None:
    """A file given by path: hash it, load it fully, and compare with any registry entry of the same hash/name."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    digest = hub.sha256_file(path)
    desc = W.load_checkpoint(path)  # validates metadata and every tensor
    registry = W.load_registry()
    same_hash = [e.name for e in registry.values() if e.sha256 == digest]
    same_name = [e for e in registry.values() if e.filename == path.name and e.sha256 is not None]
    if not same_hash and same_name:
        e = same_name[0]
        raise WeightsError(
            f"{path}: sha256 {digest[:16]}... does not match {e.name}'s {e.sha256[:16]}... (damaged or a "  # type: ignore[index]
            "different version); nothing was deleted"
        )
    match = f"matches registry model {same_hash[0]}" if same_hash else "not a registry file"
    out_console.print(
        f"[green]ok[/] {path}: valid vrrestore checkpoint ({desc.architecture}, task {desc.task}, head {desc.head}); "
        f"sha256 {digest}; {match}",
        highlight=False, soft_wrap=True,
    )


@app.command("path")
def path(
    name: Annotated[str, typer.Argument(help="A registry name.")],
) -> None:
    """Print the local file a registry model resolves to (no download; exit 3 if it is not available locally)."""
    entry = _entry(name)
    typer.echo(str(W.resolve_entry(entry, download=False)))


@app.command("card")
def card(
    name: Annotated[str, typer.Argument(help="A registry name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write README.md into (created if missing).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing README.md in that folder.")] = False,
) -> None:
    """Write a Hugging Face model card (README.md with YAML front matter) for publishing a model."""
    entry = _entry(name)
    readme = output / "README.md"
    if readme.exists() and not overwrite:
        raise UsageError(f"{readme} already exists; pass --overwrite to replace it")
    output.mkdir(parents=True, exist_ok=True)
    readme.write_text(W.model_card(entry), encoding="utf-8")
    typer.echo(str(readme))


@app.command("import")
def import_(
    src: Annotated[Path, typer.Argument(help="A foreign state_dict: .pth/.pt (read with torch's weights-only unpickler) or plain .safetensors.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The vrrestore checkpoint to write (.safetensors).")],
    preset: Annotated[str, typer.Option("--preset", help="Architecture preset the tensors belong to: face-tiny, face-s, face-base, sr-tiny, sr-x4-s, sr-x2-s or sr-x4-base.")],
    head: Annotated[HeadChoice, typer.Option("--head", help="Codebook head the tensors were trained with.")],
    dtype: Annotated[DtypeChoice, typer.Option("--dtype", help="Precision of the floating tensors in the written file.")] = DtypeChoice.fp32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Convert a foreign checkpoint into a self-describing vrrestore safetensors file (pickled code never runs)."""
    out = W.import_checkpoint(src, output, preset=preset, head=head.value, dtype=dtype.value, overwrite=overwrite)
    err_console.print(f"[green]wrote[/] {out} ({preset}, head {head.value}, {dtype.value}, {_size(out.stat().st_size)})", highlight=False)
