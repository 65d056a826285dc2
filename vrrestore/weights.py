"""The weights registry and the one place that turns ``--model`` into a loaded model.

The registry is ``vrrestore/weights.json`` (the only copy; it ships as package data), read at call time:
nothing is loaded or cached at import. Resolution order for a registry entry:
``VRRESTORE_WEIGHTS_DIR/<filename>`` > file bundled in the package > Hub cache > pinned Hub download. Every
file that the registry knows a sha256 for is hashed before it is loaded; a mismatch refuses to load and
deletes nothing. Only safetensors are loaded; foreign ``.pth`` files go through :func:`import_checkpoint`,
which unpickles with torch's weights-only allow-list and never runs pickled code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch

from . import hub
from .cache import cache_dir
from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
from .errors import UsageError, WeightsError
from .models import preset as _preset
from .models.config import config_from_dict, config_to_dict
from .models.descriptor import ModelDescriptor, build_model
from .models.face import FaceConfig
from .models.heads import HEAD_KINDS
from .models.sr import SRConfig

Task = Literal["face", "sr"]
Status = Literal["bundled", "cached", "invalid", "remote", "unpublished"]
ARCHITECTURE_OF_TASK = {"face": "FaceRestorer", "sr": "SRRestorer"}
COMMAND_OF_TASK = {"face": "face", "sr": "image"}
PICKLE_SUFFIXES = {".pth", ".pt", ".ckpt", ".bin", ".pkl", ".pickle", ".tar"}
REGISTRY_SCHEMA = 1
MAX_BUNDLED_BYTES = 16 << 20  # the wheel must stay small; face-s in fp16 is 16,568,030 bytes
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_REQUIRED = ("name", "status", "task", "architecture", "preset", "head", "repo_id", "revision", "filename",
             "sha256", "size_bytes", "license", "data", "metrics", "bundled")
_OPTIONAL: dict[str, Any] = {"default": False, "description": "", "dtype": "fp16", "overrides": {}}


@dataclass(frozen=True)
class WeightEntry:
    """One registry row. Repo fields are None while ``status == "unpublished"`` (no trained file exists)."""

    name: str
    task: Task
    architecture: str
    preset: str
    head: str
    repo_id: str | None
    revision: str | None
    filename: str | None
    sha256: str | None
    size_bytes: int | None
    license: str | None
    data: str
    metrics: Mapping[str, Any] = field(hash=False)
    bundled: str | None
    status: Literal["published", "unpublished"]
    default: bool = False
    description: str = ""
    dtype: str = "fp16"
    # top-level config fields where the file differs from today's preset (a preset that grew a block
    # after the file was trained: face-cpu's out_fuse); `train publish` writes them from the file
    overrides: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def published(self) -> bool:
        return self.status == "published"

    def config(self) -> FaceConfig | SRConfig:
        """The architecture config: the named preset with this entry's head and overrides."""
        base = _preset(self.preset)
        return config_from_dict(type(base), {**config_to_dict(base), **self.overrides, "head": self.head})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = dict(self.metrics)
        return d


def config_overrides(preset_name: str, file_config: Mapping[str, Any]) -> dict[str, Any]:
    """The registry ``overrides`` of a checkpoint's config against a preset: its top-level fields that
    differ (fields it lacks take their defaults, as loading it does). The head is an entry field, not an
    override; a different prior is not an override but another preset (ValueError)."""
    base = _preset(preset_name)
    have = config_to_dict(config_from_dict(type(base), dict(file_config)))
    want = config_to_dict(base)
    if have["prior"] != want["prior"]:
        raise ValueError(f"its prior geometry is not preset {preset_name}'s")
    return {k: v for k, v in have.items() if k not in ("prior", "head") and v != want[k]}


# --------------------------------------------------------------------------------------------- registry


def _package_files() -> Any:
    """The installed package's files (a Traversable; a plain Path unless the package is zipped)."""
    return resources.files("vrrestore")


def registry_path() -> Path | None:
    """``$VRRESTORE_REGISTRY`` if set (tests, private mirrors), else None for the packaged registry."""
    env = os.environ.get("VRRESTORE_REGISTRY")
    return Path(env).expanduser() if env else None


def load_registry(path: Path | None = None) -> dict[str, WeightEntry]:
    """Parse and validate a registry: ``path``, else ``$VRRESTORE_REGISTRY``, else the packaged weights.json."""
    path = Path(path) if path is not None else registry_path()
    try:
        if path is None:
            source = "vrrestore/weights.json"
            text = _package_files().joinpath("weights.json").read_text(encoding="utf-8")
        else:
            source = str(path)
            text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise WeightsError(f"{source}: weights registry not found; unset VRRESTORE_REGISTRY or reinstall vrrestore") from None
    except (OSError, ValueError) as err:
        raise WeightsError(f"{source}: unreadable weights registry ({err}); fix or replace the file") from None
    if not isinstance(data, dict) or data.get("schema") != REGISTRY_SCHEMA or not isinstance(data.get("models"), list):
        raise WeightsError(f"{source}: not a vrrestore weights registry (expected {{\"schema\": {REGISTRY_SCHEMA}, \"models\": [...]}})")
    entries: dict[str, WeightEntry] = {}
    for raw in data["models"]:
        entry = _parse_entry(raw, source)
        if entry.name in entries:
            raise WeightsError(f"{source}: model {entry.name!r} is listed twice; keep one entry per name")
        entries[entry.name] = entry
    for task in ARCHITECTURE_OF_TASK:
        defaults = [e.name for e in entries.values() if e.task == task and e.default]
        if len(defaults) > 1:
            raise WeightsError(f"{source}: several default {task} models ({', '.join(defaults)}); mark only one \"default\": true")
    return entries


def _parse_entry(raw: Any, source: str) -> WeightEntry:
    name = raw.get("name") if isinstance(raw, dict) else None

    def bad(problem: str) -> WeightsError:
        return WeightsError(f"{source}: model {name!r}: {problem}; fix the registry entry")

    if not isinstance(raw, dict):
        raise bad("entry is not a JSON object")
    missing = [k for k in _REQUIRED if k not in raw]
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if missing:
        raise bad(f"missing fields {', '.join(missing)} (write null for unknown values)")
    if unknown:
        raise bad(f"unknown fields {', '.join(unknown)}")
    e = WeightEntry(**{**_OPTIONAL, "overrides": {}, **raw})  # a fresh {} per entry, never a shared default
    if not isinstance(e.name, str) or not _NAME.fullmatch(e.name):
        raise bad("name must be lower-case letters, digits, '.', '_' or '-'")
    if e.task not in ARCHITECTURE_OF_TASK:
        raise bad(f"task must be face or sr, not {e.task!r}")
    if e.architecture != ARCHITECTURE_OF_TASK[e.task]:
        raise bad(f"a {e.task} model has architecture {ARCHITECTURE_OF_TASK[e.task]}, not {e.architecture!r}")
    if e.head not in HEAD_KINDS:
        raise bad(f"head must be one of {', '.join(HEAD_KINDS)}, not {e.head!r}")
    try:
        cfg = _preset(e.preset)
    except KeyError as err:
        raise bad(str(err).strip("\"'")) from None
    if not isinstance(cfg, FaceConfig if e.task == "face" else SRConfig):
        raise bad(f"preset {e.preset} is not a {e.task} preset")
    if e.status not in ("published", "unpublished"):
        raise bad(f"status must be published or unpublished, not {e.status!r}")
    if e.filename is not None and (
        not isinstance(e.filename, str) or not e.filename.endswith(".safetensors") or e.filename.startswith("/")
        or ".." in Path(e.filename).parts
    ):
        raise bad("filename must be a relative path ending in .safetensors")
    if e.bundled is not None and (
        not isinstance(e.bundled, str) or not e.bundled.startswith("bundled/") or ".." in e.bundled.split("/")
        or not e.bundled.endswith(".safetensors")
    ):
        raise bad("bundled must be a path inside the package such as bundled/<file>.safetensors")
    if e.bundled is not None and isinstance(e.size_bytes, int) and e.size_bytes > MAX_BUNDLED_BYTES:
        raise bad(f"a bundled file may be at most {MAX_BUNDLED_BYTES >> 20} MiB ({e.size_bytes} bytes given); publish it on the Hub instead")
    if not isinstance(e.metrics, dict) or not isinstance(e.data, str) or not isinstance(e.default, bool):
        raise bad("metrics must be an object, data a string and default true/false")
    if not isinstance(e.overrides, dict) or {"head", "prior"} & set(e.overrides):
        raise bad("overrides must be an object of top-level config fields other than head and prior")
    try:
        e.config()
    except (ValueError, TypeError) as err:
        raise bad(f"overrides: {err}") from None
    for key, value in e.overrides.items():  # "false" (a string) would build the block it means to leave out
        want = type(getattr(cfg, key))
        fits = isinstance(value, want) or (want is tuple and isinstance(value, list)) or (want is float and isinstance(value, int))
        if not fits or (want is not bool and isinstance(value, bool)):
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list"}.get(want, want.__name__)
            raise bad(f"overrides: {key} must be {kind}, like the preset's {getattr(cfg, key)!r}")
    if e.status == "unpublished":
        set_fields = [k for k in ("repo_id", "revision", "sha256", "size_bytes", "bundled") if getattr(e, k) is not None]
        if set_fields:
            raise bad(f"an unpublished entry must have null {', '.join(set_fields)} (only verified values may be written)")
        return e
    if e.filename is None:
        raise bad("a published entry needs a filename")
    if not isinstance(e.sha256, str) or not _HEX64.fullmatch(e.sha256):
        raise bad("sha256 must be the 64 lower-case hex digits of the published file")
    if not isinstance(e.size_bytes, int) or e.size_bytes <= 0:
        raise bad("size_bytes must be the published file's size in bytes")
    if e.repo_id is None and e.bundled is None:
        raise bad("a published entry needs repo_id + revision, bundled, or both")
    if e.repo_id is not None:
        if not isinstance(e.repo_id, str) or not _REPO.fullmatch(e.repo_id):
            raise bad("repo_id must look like owner/name")
        if not isinstance(e.revision, str) or not _HEX40.fullmatch(e.revision):
            raise bad("revision must be a 40-hex commit sha, never a branch or tag")
    return e


def default_entry(task: Task, registry: Mapping[str, WeightEntry] | None = None) -> WeightEntry:
    reg = registry if registry is not None else load_registry()
    for e in reg.values():
        if e.task == task and e.default:
            return e
    raise WeightsError(f"the weights registry has no default {task} model; pass --model PATH to a checkpoint")


# -------------------------------------------------------------------------------------------- locating


def _weights_dir_file(entry: WeightEntry) -> Path | None:
    folder = os.environ.get("VRRESTORE_WEIGHTS_DIR")
    if not folder or entry.filename is None:
        return None
    p = Path(folder).expanduser() / entry.filename
    return p if p.is_file() else None


def _bundled_file(entry: WeightEntry) -> Path | None:
    """The packaged file, as a real path (extracted into the vrrestore cache if the package is zipped)."""
    if entry.bundled is None:
        return None
    res = _package_files().joinpath(entry.bundled)
    if isinstance(res, Path):
        return res if res.is_file() else None
    if not res.is_file():
        return None
    target = cache_dir("bundled", create=True) / Path(entry.bundled).name
    if not target.is_file() or target.stat().st_size != entry.size_bytes:
        with res.open("rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def _hub_cached_file(entry: WeightEntry) -> Path | None:
    if entry.repo_id is None or entry.revision is None or entry.filename is None:
        return None
    return hub.cached_file(entry.repo_id, entry.filename, entry.revision)


def local_copies(entry: WeightEntry) -> list[tuple[str, Path]]:
    """Every local copy of the entry's file, in resolution order: weights-dir, bundled, hub-cache."""
    found = [("weights-dir", _weights_dir_file(entry)), ("bundled", _bundled_file(entry)), ("hub-cache", _hub_cached_file(entry))]
    return [(where, p) for where, p in found if p is not None]


def entry_state(entry: WeightEntry) -> tuple[Status, str | None]:
    """(status, why the local file would be refused or None); never touches the network.

    bundled / cached (weights dir or Hub cache) only when loading would accept that file: the copy
    that resolution picks first is checked exactly as loading checks it (size, sha256, metadata), so
    the list never says "cached" for a file that ``--model NAME`` then refuses; such a file is
    "invalid". remote = published, not downloaded yet; unpublished = no trained file exists.
    """
    copies = local_copies(entry)
    if copies:
        where, path = copies[0]
        try:
            check_local(entry, path, where)
        except WeightsError as err:
            return "invalid", " ".join(str(err).split())
        return ("bundled" if where == "bundled" else "cached"), None
    return ("remote" if entry.published and entry.repo_id is not None else "unpublished"), None


def entry_status(entry: WeightEntry) -> Status:
    """bundled / cached / invalid / remote / unpublished (see :func:`entry_state`)."""
    return entry_state(entry)[0]


def list_entries() -> list[tuple[WeightEntry, str]]:
    """(entry, status) for every registry entry, in registry order."""
    return [(e, entry_status(e)) for e in load_registry().values()]


# ------------------------------------------------------------------------------------------- verifying


def check_local(entry: WeightEntry, path: Path, where: str = "") -> dict[str, str]:
    """Everything loading checks about a local copy of ``entry`` before building the model: size and
    sha256 (:func:`check_file`), then the metadata (a vrrestore checkpoint of this entry's task,
    architecture and config). Returns the metadata; WeightsError on any refusal."""
    check_file(entry, path, where)
    meta = read_metadata(path)
    check_metadata(entry, path, meta)
    return meta


def check_metadata(entry: WeightEntry, path: Path, meta: Mapping[str, str], option: str = "--model") -> None:
    """Refuse a checkpoint whose metadata is not ``entry`` (another preset, head or task). Configs are
    compared as loading builds them: a field the file lacks takes its default."""
    expected = entry.config()
    try:
        cfg = config_from_dict(type(expected), json.loads(meta.get("config", "null")))
    except (ValueError, TypeError, AttributeError):
        cfg = None
    if meta.get("architecture") != entry.architecture or cfg != expected:
        raise WeightsError(
            f"{path}: the checkpoint is not {entry.name} ({entry.architecture} {entry.preset}, head {entry.head}) "
            f"but {meta.get('architecture')} head {meta.get('head')}; remove the mislabelled file or pass it with {option} PATH"
        )


def check_file(entry: WeightEntry, path: Path, where: str = "") -> None:
    """Refuse a file whose size or sha256 differs from the registry's; nothing is deleted."""
    if entry.sha256 is None:
        return
    fix = (f"run `vrrestore weights download {entry.name} --force`" if where == "hub-cache"
           else f"remove or replace it, then run `vrrestore weights download {entry.name}`")
    size = path.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        raise WeightsError(
            f"{path}: {size} bytes but {entry.name} should be {entry.size_bytes} (truncated or a different file); "
            f"refusing to load it, nothing was deleted: {fix}"
        )
    got = hub.sha256_file(path)
    if got != entry.sha256:
        raise WeightsError(
            f"{path}: sha256 {got[:16]}... does not match {entry.name}'s {entry.sha256[:16]}... (damaged or a "
            f"different version); refusing to load it, nothing was deleted: {fix}"
        )


# ------------------------------------------------------------------------------------------- resolving


def unpublished_message(entry: WeightEntry, *, as_default: bool, option: str = "--model") -> str:
    """Plain words for "no trained file exists", with the two ways to proceed; ``option`` is the flag
    that takes a checkpoint where the model was asked for (``--model``, or ``--bg-model`` in `face`)."""
    hint = (f"pass {option} PATH to a checkpoint (for example one written by `vrrestore train`), or put "
            f"{entry.filename or entry.name + '.safetensors'} in VRRESTORE_WEIGHTS_DIR")
    if as_default:
        return f"no trained {entry.task} model is available yet ({entry.name} is unpublished); {hint}"
    return f"{entry.name} is unpublished (no trained weights exist yet); {hint}"


def resolve_entry(entry: WeightEntry, *, download: bool = True, as_default: bool = False, option: str = "--model") -> Path:
    """The verified local file for ``entry``, downloading it (pinned revision) if allowed and needed."""
    for where, path in local_copies(entry):
        check_file(entry, path, where)
        return path
    if not entry.published:
        raise WeightsError(unpublished_message(entry, as_default=as_default, option=option))
    if entry.repo_id is None or entry.revision is None or entry.filename is None:
        raise WeightsError(
            f"{entry.name}: the bundled file {entry.bundled} is missing from this installation; reinstall vrrestore "
            f"or pass {option} PATH"
        )
    if not download:
        raise WeightsError(f"{entry.name} is not downloaded yet; run `vrrestore weights download {entry.name}`")
    path = hub.download_file(entry.repo_id, entry.filename, entry.revision, name=entry.name, option=option)
    check_file(entry, path, "hub-cache")
    return path


def looks_like_path(model: str) -> bool:
    return "/" in model or os.sep in model or Path(model).suffix.lower() in PICKLE_SUFFIXES | {".safetensors"}


def _check_path(model: str, registry: Mapping[str, WeightEntry]) -> Path:
    path = Path(model).expanduser()
    if not path.exists():
        names = f" ({', '.join(registry)})" if registry else ""
        raise WeightsError(
            f"{model}: no such file; pass a .safetensors checkpoint or a name from `vrrestore weights list`{names}"
        )
    if path.is_dir():
        raise WeightsError(f"{model} is a folder; pass a .safetensors file, or set VRRESTORE_WEIGHTS_DIR to the folder")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: only .safetensors checkpoints are loaded (pickle files can run code); convert it with "
            f"`vrrestore weights import {path} -o {path.with_suffix('.safetensors').name} --preset NAME --head KIND`"
        )
    return path


def _an(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" or word == "sr" else f"a {word}"


def _asker(task: Task, option: str) -> str:
    """Who asked for the model, in the command line's words: `vrrestore image`, or the flag (``--bg-model``)."""
    return f"`vrrestore {COMMAND_OF_TASK[task]}`" if option == "--model" else option


def _resolve(model: str | None, task: Task, option: str = "--model") -> tuple[Path, WeightEntry | None]:
    if task not in ARCHITECTURE_OF_TASK:
        raise ValueError(f"task must be face or sr, not {task!r}")
    if model is not None and looks_like_path(model):
        return _check_path(model, {}), None
    registry = load_registry()
    if model is None:
        entry = default_entry(task, registry)
        return resolve_entry(entry, as_default=True, option=option), entry
    if model in registry:
        entry = registry[model]
        if entry.task != task:  # a name that cannot fit this command: usage (exit 2), like an unknown name
            fallback = next((e.name for e in registry.values() if e.task == task and e.default), None)
            example = f" (e.g. {fallback})" if fallback else ""
            raise UsageError(f"{model} is {_an(entry.task)} model; {_asker(task, option)} needs {_an(task)} model{example}")
        return resolve_entry(entry, option=option), entry
    if not Path(model).expanduser().exists():
        raise UsageError(unknown_name_message(model, registry) + " or pass a path to a .safetensors checkpoint")
    return _check_path(model, registry), None


def unknown_name_message(name: str, registry: Mapping[str, WeightEntry]) -> str:
    """The one wording for a name that is not in the registry (a usage error, exit 2)."""
    return f"unknown model {name!r}; choose one of {', '.join(registry) or 'none'} (see `vrrestore weights list`)"


def resolve_weights(model: str | None, task: Task) -> Path:
    """Local path of the weights for ``model`` (None = the task's default, a registry name, or a file path)."""
    return _resolve(model, task)[0]


def load_model(model: str | None, task: Task, device: torch.device | str = "cpu", *, option: str = "--model") -> ModelDescriptor:
    """Resolve, verify and load a restorer for ``task``; refuses files made for the other task.

    ``option`` is the flag that named ``model`` (``--model``; ``--bg-model`` for the background of
    `vrrestore face`): every hint in an error names that flag, never another command's."""
    path, entry = _resolve(model, task, option)
    meta = read_metadata(path)
    if meta.get("task") != task:
        raise WeightsError(f"{path.name} is {_an(str(meta.get('task')))} model; {_asker(task, option)} needs {_an(task)} model")
    if entry is not None:
        check_metadata(entry, path, meta, option)
    desc = load_checkpoint(path, device)
    desc.metadata["path"] = str(path)
    if entry is not None:
        desc.metadata["registry_name"] = entry.name
    return desc


# ------------------------------------------------------------------------------------------ importing

_WRAPPER_KEYS = ("params_ema", "params", "state_dict")


def _read_foreign(src: Path) -> Any:
    """Tensors from a foreign file; pickles go through torch's weights-only unpickler (no code runs)."""
    if src.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(src))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{src}: not a readable safetensors file ({err})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError...: all refusals
        text = str(err)
        reason = next((ln.strip().rstrip(".") for ln in text.splitlines() if "nsupported" in ln), "")
        if "Weights only load failed" in text:
            raise WeightsError(
                f"{src}: refused: the pickle holds objects outside torch's weights-only allow-list "
                f"({reason or 'not a plain tensor state_dict'}); only plain state_dict checkpoints can be imported, "
                "nothing in it was run"
            ) from None
        raise WeightsError(f"{src}: not a PyTorch checkpoint ({type(err).__name__}: {text.splitlines()[0] if text else ''})") from None


def _unwrap_state_dict(obj: Any, src: Path) -> dict[str, torch.Tensor]:
    """Peel a params_ema/params/state_dict wrapper and a DataParallel ``module.`` prefix."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{src}: holds no state_dict (expected a mapping of tensor names to tensors, optionally "
                           f"under {', '.join(_WRAPPER_KEYS)})")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"{src}: {len(not_tensors)} entries are not tensors (e.g. {not_tensors[0]!r}); pass a plain "
                           "state_dict or one wrapped in params_ema/params/state_dict")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def import_checkpoint(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    preset: str,
    head: str,
    dtype: str = "fp32",
    overwrite: bool = False,
) -> Path:
    """Convert a foreign state_dict (.pth or plain .safetensors) into a vrrestore checkpoint for ``preset``."""
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise WeightsError(f"{src}: no such file")
    if out.suffix != ".safetensors":
        raise UsageError(f"{out}: the output must end in .safetensors")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    if head not in HEAD_KINDS:
        raise UsageError(f"--head must be one of {', '.join(HEAD_KINDS)}, not {head!r}")
    try:
        cfg = dataclasses.replace(_preset(preset), head=head)  # type: ignore[arg-type]
    except KeyError as err:
        raise UsageError(str(err).strip("\"'")) from None
    arch = "FaceRestorer" if isinstance(cfg, FaceConfig) else "SRRestorer"
    state = _unwrap_state_dict(_read_foreign(src), src)
    model = build_model(arch, cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        def eg(items: list[str]) -> str:
            return f" (e.g. {items[0]})" if items else ""

        raise WeightsError(
            f"{src.name} does not fit {arch} preset {preset} head {head}: {len(missing)} missing keys{eg(missing)}, "
            f"{len(unexpected)} unexpected keys{eg(unexpected)}, {len(shapes)} shape mismatches{eg(shapes)} "
            f"(of {len(expected)}); check --preset and --head"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return save_checkpoint(
        model, out, dtype=dtype,
        training={"imported_from": src.name, "source_sha256": hub.sha256_file(src), "preset": preset},
    )


# ---------------------------------------------------------------------------------------- model card

PAPER_TITLE = "Rethinking the Role of Vector Quantization for Blind Image Restoration"
PAPER_BIBTEX = """@article{Zheng2025VR4BIR,
  title   = {Rethinking the Role of Vector Quantization for Blind Image Restoration},
  author  = {Zheng, Zhaolin and Xue, Liqi and Li, Linghao and Gong, Chenwei and Zhen, Xiantong and Xu, Jun},
  journal = {IEEE Transactions on Multimedia},
  year    = {2025}
}"""


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return []
    return ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in metrics.items()]]


def model_card(entry: WeightEntry) -> str:
    """A Hub README.md (YAML front matter + description) for publishing ``entry``."""
    task_tag = "blind-face-restoration" if entry.task == "face" else "super-resolution"
    tags = ["vrrestore", "image-restoration", task_tag, "vector-regression" if entry.head == "vr" else f"{entry.head}-head",
            "vqgan", "safetensors"]
    front = [
        "---",
        f"license: {entry.license or 'other'}",
        *([] if entry.license else ["license_name: undecided"]),
        "library_name: vrrestore",
        "pipeline_tag: image-to-image",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
    ]
    cfg = entry.config()
    scale = getattr(cfg, "scale", 1)
    cmd = COMMAND_OF_TASK[entry.task]
    rows = [
        ("Task", f"blind face restoration (aligned {cfg.prior.img_size} px crops)" if entry.task == "face"
         else f"real-world super-resolution x{scale}"),
        ("Architecture", f"{entry.architecture}, preset `{entry.preset}`, head `{entry.head}`"),
        ("File", f"`{entry.filename}` ({entry.dtype})" if entry.filename else "not published yet"),
        ("sha256", f"`{entry.sha256}`" if entry.sha256 else "not published yet"),
        ("Size", f"{entry.size_bytes} bytes" if entry.size_bytes else "not published yet"),
        ("Revision", f"`{entry.revision}`" if entry.revision else "not published yet"),
        ("Licence", entry.license or "undecided (set when the weights are published)"),
    ]
    body = [
        f"# {entry.name}",
        "",
        entry.description or f"{entry.architecture} ({entry.preset}) with a `{entry.head}` codebook head, for vrrestore.",
        "",
        f"Reference: Zheng et al. 2025, \"{PAPER_TITLE}\".",
        *([] if entry.published else ["", "**Status: unpublished.** No trained weights exist for this entry yet."]),
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "## Training data",
        "",
        entry.data or "not recorded",
        "",
        "## Metrics",
        "",
        *(_metrics_table(entry.metrics) or ["Not measured yet."]),
        "",
        "## Usage",
        "",
        "```bash",
        "pip install vrrestore",
        f"vrrestore {cmd} INPUT --model {entry.name}",
        "```",
        "",
        "```python",
        "from vrrestore.api import Restorer",
        f"restorer = Restorer.from_pretrained({entry.name!r})",
        "restored = restorer(images)  # numpy arrays or PIL images",
        "```",
        "",
        "Only the safetensors file is loaded; its metadata describes the architecture, so no code is downloaded.",
        "",
        "## Citation",
        "",
        "```bibtex",
        PAPER_BIBTEX,
        "```",
        "",
    ]
    return "\n".join(front + [""] + body)
