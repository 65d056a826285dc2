"""A small Hugging Face Hub look-alike on 127.0.0.1 for tests (stdlib only, no network).

It answers what huggingface_hub's ``hf_hub_download`` and ``snapshot_download`` ask for:
``HEAD/GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, a quoted ``ETag`` (the sha256, like an LFS
file) and ``Content-Length``; ``GET /api/models/{repo}/revision/{rev}`` and ``GET /api/models/{repo}/tree/{sha}``.
Errors carry the ``X-Error-Code`` headers the real Hub sends, so the client raises its real exception classes.
Every request is recorded in ``requests`` so tests can count network use.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {filename: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # branch -> sha
    gated: bool = False
    token: str | None = None  # if set, requests must send "Authorization: Bearer <token>"


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


class FakeHub:
    """``with FakeHub() as hub: hub.url`` serves until the block ends; ``hub.stop()`` simulates an outage."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ----------------------------------------------------------------------------------- content
    def add_commit(self, repo_id: str, files: dict[str, bytes], *, ref: str | None = "main") -> str:
        """Add a commit holding ``files``; returns its 40-hex sha (and moves ``ref`` to it)."""
        repo = self.repos.setdefault(repo_id, FakeRepo())
        sha = hashlib.sha1(f"{repo_id}:{len(repo.commits)}".encode() + b"".join(sorted(files.values()))).hexdigest()
        repo.commits[sha] = dict(files)
        if ref is not None:
            repo.refs[ref] = sha
        return sha

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if (method is None or r.method == method) and contains in r.path)

    # --------------------------------------------------------------------------------- lifecycle
    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

            def do_GET(self) -> None:
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------- handling
    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append(Request(h.command, path, h.headers.get("Authorization")))
        parts = path.strip("/").split("/")
        if path == "/api/agent-harnesses":
            return self._json(h, {"standardEnvVars": [], "harnesses": {}}, body)
        if len(parts) >= 5 and parts[0] == "api" and parts[1] == "models" and parts[4] in ("revision", "tree"):
            repo_id, kind, rev = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            repo, sha = self._lookup(h, repo_id, rev, body)
            if repo is None or sha is None:
                return None
            files = repo.commits[sha]
            if kind == "revision":
                return self._json(h, {"id": repo_id, "sha": sha, "siblings": [{"rfilename": f} for f in files]}, body)
            tree = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()} for f, b in files.items()]
            return self._json(h, tree, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rev, filename = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            repo, sha = self._lookup(h, repo_id, rev, body)
            if repo is None or sha is None:
                return None
            data = repo.commits[sha].get(filename)
            if data is None:
                return self._error(h, 404, "EntryNotFound", body, commit=sha)
            h.send_response(200)
            h.send_header("X-Repo-Commit", sha)
            h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()
            if body:
                h.wfile.write(data)
            return None
        return self._error(h, 404, "", body)

    def _lookup(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, body: bool) -> tuple[FakeRepo | None, str | None]:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 401, "RepoNotFound", body)
            return None, None
        if repo.gated:
            self._error(h, 403, "GatedRepo", body)
            return None, None
        if repo.token is not None and h.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(h, 401, "", body, message="Invalid credentials in Authorization header")
            return None, None
        sha = repo.refs.get(rev, rev)
        if sha not in repo.commits:
            self._error(h, 404, "RevisionNotFound", body)
            return None, None
        return repo, sha

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, obj: object, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int, code: str, body: bool, *, commit: str | None = None,
               message: str | None = None) -> None:
        data = json.dumps({"error": message or code or "not found"}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        if message:
            h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)


# ------------------------------------------------------------------------------ registry helpers


def entry_dict(
    name: str,
    data: bytes | None,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    task: str = "face",
    preset: str = "face-tiny",
    head: str = "vr",
    filename: str | None = None,
    sha256: str | None = None,
    bundled: str | None = None,
    default: bool = False,
    license: str | None = "apache-2.0",
) -> dict[str, object]:
    """A registry entry for test weights: published (hash and size of ``data``) unless ``data`` is None."""
    published = data is not None
    return {
        "name": name,
        "status": "published" if published else "unpublished",
        "default": default,
        "task": task,
        "architecture": "FaceRestorer" if task == "face" else "SRRestorer",
        "preset": preset,
        "head": head,
        "repo_id": repo_id if published else None,
        "revision": revision if published else None,
        "filename": filename or f"{name}.safetensors",
        "sha256": (sha256 or hashlib.sha256(data).hexdigest()) if data is not None else None,
        "size_bytes": len(data) if data is not None else None,
        "license": license,
        "data": "test weights",
        "metrics": {"psnr": 1.5} if published else {},
        "bundled": bundled if published else None,
    }


def write_registry(path: Path, entries: list[dict[str, object]]) -> Path:
    """Write a registry file (what VRRESTORE_REGISTRY points at) and return its path."""
    path.write_text(json.dumps({"schema": 1, "models": entries}, indent=1))
    return path
