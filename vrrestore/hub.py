"""Hugging Face Hub access: cache look-ups, pinned downloads and one-line error messages.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` once, at import. We read
them at call time and pass ``endpoint=``/``cache_dir=``/``token=`` explicitly, so a wrapper that sets them after
import is obeyed. The library is imported lazily: listing or loading a bundled model never imports it.
The cache is consulted before any request, because an unreachable endpoint costs ~23 s of retries.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import WeightsError

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: Path
    token: str | None
    offline: bool


def hub_settings() -> HubSettings:
    """The Hub settings the environment asks for now (same defaults as huggingface_hub)."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(hf_home, "hub")
    offline = any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return HubSettings(
        endpoint=(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        cache_dir=Path(cache).expanduser(),
        token=os.environ.get("HF_TOKEN") or None,
        offline=offline,
    )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (follows the Hub cache's symlinks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_file(repo_id: str, filename: str, revision: str, settings: HubSettings | None = None) -> Path | None:
    """The file's path in the Hub cache for this exact revision, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    s = settings or hub_settings()
    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(s.cache_dir), revision=revision)
    if isinstance(found, str) and os.path.isfile(found):
        return Path(found)
    return None


def download_file(
    repo_id: str, filename: str, revision: str, *, name: str, force: bool = False, settings: HubSettings | None = None,
    option: str = "--model",
) -> Path:
    """Cache hit (zero requests) or pinned ``hf_hub_download``; any failure is a one-line WeightsError whose
    hint names ``option``, the flag that takes a local checkpoint instead."""
    s = settings or hub_settings()
    if not force:
        hit = cached_file(repo_id, filename, revision, s)
        if hit is not None:
            return hit
    if s.offline:
        raise WeightsError(_offline_message(name, s, option))
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=str(s.cache_dir), endpoint=s.endpoint, token=s.token,
            force_download=force, library_name="vrrestore", library_version=__version__,
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one actionable line
        raise WeightsError(hub_error_message(err, name=name, repo_id=repo_id, revision=revision, filename=filename,
                                             settings=s, option=option)) from err
    return Path(path)


def _offline_message(name: str, s: HubSettings, option: str = "--model") -> str:
    return (
        f"{name} is not in the Hub cache ({s.cache_dir}) and HF_HUB_OFFLINE is set; run "
        f"`vrrestore weights download {name}` on a connected machine (same HF_HOME), or pass {option} PATH"
    )


def _is_connection_error(err: BaseException | None) -> bool:
    """True if ``err`` or anything it was raised from is a network failure."""
    kinds: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    try:
        import httpx2  # huggingface_hub's HTTP client (2.x); absent in other versions

        kinds += (httpx2.TransportError,)
    except ImportError:
        pass
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, kinds):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def hub_error_message(
    err: BaseException, *, name: str, repo_id: str, revision: str, filename: str, settings: HubSettings,
    option: str = "--model",
) -> str:
    """One line naming the model, what went wrong and the fix (the mapping diffusers' hub_utils does)."""
    from huggingface_hub.errors import (
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    s = settings
    where = f"{repo_id}@{revision[:12]}"
    if isinstance(err, ValueError) and err.__cause__ is not None and not isinstance(err, HfHubHTTPError):
        err = err.__cause__  # force_download wraps the real failure in a ValueError
    if isinstance(err, GatedRepoError):
        return (f"{name}: {repo_id} is a gated repository on {s.endpoint}; accept its terms on the model page and "
                "set HF_TOKEN to a token that has access")
    if isinstance(err, RepositoryNotFoundError):
        return (f"{name}: repository {repo_id} was not found on {s.endpoint} (or it is private); check HF_ENDPOINT, "
                f"set HF_TOKEN if the repository is private, or pass {option} PATH")
    if isinstance(err, RevisionNotFoundError):
        return (f"{name}: revision {revision} does not exist in {repo_id} on {s.endpoint}; the registry pins a "
                f"commit the Hub no longer has: upgrade vrrestore or pass {option} PATH")
    if isinstance(err, RemoteEntryNotFoundError):
        return (f"{name}: {where} on {s.endpoint} has no file {filename}; the registry entry is wrong: upgrade "
                f"vrrestore or pass {option} PATH")
    if isinstance(err, OfflineModeIsEnabled):
        return _offline_message(name, s, option)
    if isinstance(err, HfHubHTTPError):
        code = getattr(getattr(err, "response", None), "status_code", None)
        if code in (401, 403):
            return (f"{name}: {s.endpoint} refused access to {repo_id} (HTTP {code}); set HF_TOKEN to a valid "
                    "token with read access")
        return f"{name}: {s.endpoint} answered HTTP {code} for {where}/{filename}; try again later or pass {option} PATH"
    if isinstance(err, LocalEntryNotFoundError) and isinstance(err.__cause__, FileMetadataError):
        return (f"{name}: {s.endpoint} does not answer like a Hugging Face Hub (missing X-Repo-Commit/ETag "
                "headers); check HF_ENDPOINT and proxy settings")
    if isinstance(err, LocalEntryNotFoundError) or _is_connection_error(err):
        return (f"{name}: cannot reach {s.endpoint} and {where} is not in the Hub cache ({s.cache_dir}); check "
                f"the network or HF_ENDPOINT, or pass {option} PATH")
    if isinstance(err, OSError):
        return (f"{name}: could not write {filename} into the Hub cache {s.cache_dir} ({err}); free disk space "
                "or point HF_HOME at a writable folder")
    return f"{name}: downloading {where}/{filename} from {s.endpoint} failed ({type(err).__name__}: {err})".replace("\n", " ")
