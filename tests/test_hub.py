"""Hub downloads through the real huggingface_hub client against a fake Hub on 127.0.0.1 (issue 6)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
from huggingface_hub import snapshot_download

from fakehub import FakeHub, FakeRepo, entry_dict, write_registry
from vrrestore import hub as vhub
from vrrestore import weights as W
from vrrestore.checkpoint import save_checkpoint
from vrrestore.errors import WeightsError
from vrrestore.models import build_model, preset
from cli_main import run_main

REPO = "vrr/faces"
FILE = "vr-face-tiny.safetensors"


@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two small real checkpoints (face-tiny heads vr and vq) as bytes."""
    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for head in ("vr", "vq"):
        cfg = preset("face-tiny")
        import dataclasses

        model = build_model("FaceRestorer", dataclasses.replace(cfg, head=head))
        out[head] = save_checkpoint(model, d / f"{head}.safetensors", dtype="fp16").read_bytes()
    return out


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fresh HF_HOME / vrrestore cache per test; no env leaks in; nothing may reach the internet."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN",
                "VRRESTORE_WEIGHTS_DIR", "VRRESTORE_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "vcache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a refused port, replaced by each test's fake Hub
    # huggingface_hub read these at import; telemetry would otherwise call huggingface.co for agent detection.
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return tmp_path


@pytest.fixture
def fake() -> FakeHub:
    with FakeHub() as hub:
        yield hub


def use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub: FakeHub, entries: list[dict[str, object]]) -> None:
    monkeypatch.setenv("VRRESTORE_REGISTRY", str(write_registry(tmp_path / "registry.json", entries)))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)


cli = run_main


def test_download_then_cache_hit_makes_zero_requests(monkeypatch, tmp_path, fake, ckpt_bytes) -> None:
    rev = fake.add_commit(REPO, {FILE: ckpt_bytes["vr"]})
    use(monkeypatch, tmp_path, fake, [entry_dict("face-t", ckpt_bytes["vr"], repo_id=REPO, revision=rev, filename=FILE, default=True)])
    assert W.list_entries()[0][1] == "remote"

    desc = W.load_model(None, "face")
    assert desc.task == "face" and desc.head == "vr" and desc.metadata["registry_name"] == "face-t"
    path = Path(desc.metadata["path"])
    assert path == tmp_path / "hf" / "hub" / "models--vrr--faces" / "snapshots" / rev / FILE  # HF_HOME read at call time
    assert path.read_bytes() == ckpt_bytes["vr"]
    assert fake.count("HEAD", "/resolve/") == 1 and fake.count("GET", "/resolve/") == 1
    assert fake.count() == 2

    before = fake.count()
    assert W.resolve_weights("face-t", "face") == path
    W.load_model("face-t", "face")
    assert fake.count() == before  # cache hit: zero requests
    assert W.list_entries()[0][1] == "cached"

    # A different HF_HOME set after import is obeyed: the file is fetched again into the new cache.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf2"))
    assert W.resolve_weights("face-t", "face").is_relative_to(tmp_path / "hf2")
    assert fake.count("GET", "/resolve/") == 2


def test_pinned_revision_is_respected(monkeypatch, tmp_path, fake, ckpt_bytes) -> None:
    old = fake.add_commit(REPO, {FILE: ckpt_bytes["vr"]})
    new = fake.add_commit(REPO, {FILE: ckpt_bytes["vq"]})  # main moves on with different bytes
    assert fake.repos[REPO].refs["main"] == new != old
    use(monkeypatch, tmp_path, fake, [entry_dict("face-t", ckpt_bytes["vr"], repo_id=REPO, revision=old, filename=FILE)])

    path = W.resolve_weights("face-t", "face")
    assert path.read_bytes() == ckpt_bytes["vr"]
    resolves = [r.path for r in fake.requests if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{old}/" in p for p in resolves)
    assert not any("/main" in r.path or new in r.path for r in fake.requests)


def test_offline_mode_uses_cache_and_never_touches_the_network(monkeypatch, tmp_path, fake, ckpt_bytes, capsys) -> None:
    rev = fake.add_commit(REPO, {FILE: ckpt_bytes["vr"], "other.safetensors": ckpt_bytes["vq"]})
    use(monkeypatch, tmp_path, fake, [
        entry_dict("face-t", ckpt_bytes["vr"], repo_id=REPO, revision=rev, filename=FILE),
        entry_dict("face-o", ckpt_bytes["vq"], repo_id=REPO, revision=rev, filename="other.safetensors", head="vq"),
    ])
    W.resolve_weights("face-t", "face")
    before = fake.count()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert W.load_model("face-t", "face").head == "vr"
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match=r"face-o is not in the Hub cache .* HF_HUB_OFFLINE is set; run `vrrestore weights download face-o`"):
        W.resolve_weights("face-o", "face")
    assert time.perf_counter() - t0 < 1.0
    code, _, err = cli(monkeypatch, capsys, "weights", "download", "face-o")
    assert code == 3 and "HF_HUB_OFFLINE" in err
    assert fake.count() == before


def test_wrong_sha256_is_refused_and_the_file_is_kept(monkeypatch, tmp_path, fake, ckpt_bytes, capsys) -> None:
    rev = fake.add_commit(REPO, {FILE: ckpt_bytes["vr"]})
    bad = hashlib.sha256(b"something else").hexdigest()
    use(monkeypatch, tmp_path, fake, [entry_dict("face-t", ckpt_bytes["vr"], repo_id=REPO, revision=rev, filename=FILE, sha256=bad)])

    with pytest.raises(WeightsError, match=r"sha256 [0-9a-f]{16}\.\.\. does not match face-t's .*nothing was deleted"):
        W.load_model("face-t", "face")
    cached = vhub.cached_file(REPO, FILE, rev)
    assert cached is not None and cached.read_bytes() == ckpt_bytes["vr"]  # downloaded, refused, kept

    code, out, err = cli(monkeypatch, capsys, "weights", "verify", "face-t")
    assert code == 3 and "MISMATCH" in out and "does not match" in err
    code, _, err = cli(monkeypatch, capsys, "weights", "download", "face-t")
    assert code == 3 and "--force" in err
    assert cached.exists()


@pytest.mark.parametrize(
    ("repo", "filename", "revision", "message"),
    [
        (REPO, "missing.safetensors", None, r"face-t: vrr/faces@[0-9a-f]{12} on http://127\.0\.0\.1:\d+ has no file missing\.safetensors; "),
        ("vrr/absent", FILE, None, r"face-t: repository vrr/absent was not found on http://127\.0\.0\.1:\d+ \(or it is private\)"),
        (REPO, FILE, "f" * 40, r"face-t: revision f{40} does not exist in vrr/faces on "),
    ],
    ids=["missing-file", "missing-repo", "missing-revision"],
)
def test_hub_errors_become_one_line_messages(monkeypatch, tmp_path, fake, ckpt_bytes, capsys, repo, filename, revision, message) -> None:
    rev = fake.add_commit(REPO, {FILE: ckpt_bytes["vr"]})
    use(monkeypatch, tmp_path, fake, [entry_dict("face-t", ckpt_bytes["vr"], repo_id=repo, revision=revision or rev, filename=filename)])
    with pytest.raises(WeightsError, match=message) as info:
        W.resolve_weights("face-t", "face")
    assert "\n" not in str(info.value)
    code, out, err = cli(monkeypatch, capsys, "weights", "download", "face-t")
    assert code == 3 and out == "" and err.count("\n") == 1 and err.startswith("error: face-t")


def test_gated_repo_and_hf_token(monkeypatch, tmp_path, fake, ckpt_bytes) -> None:
    fake.repos["vrr/gated"] = FakeRepo(gated=True)
    rev = fake.add_commit("vrr/private", {FILE: ckpt_bytes["vr"]})
    fake.repos["vrr/private"].token = "hf_test_secret"
    use(monkeypatch, tmp_path, fake, [
        entry_dict("gated", ckpt_bytes["vr"], repo_id="vrr/gated", revision=rev, filename=FILE),
        entry_dict("private", ckpt_bytes["vr"], repo_id="vrr/private", revision=rev, filename=FILE),
    ])
    with pytest.raises(WeightsError, match="vrr/gated is a gated repository .* set HF_TOKEN"):
        W.resolve_weights("gated", "face")
    with pytest.raises(WeightsError, match=r"refused access to vrr/private \(HTTP 401\); set HF_TOKEN"):
        W.resolve_weights("private", "face")
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret")  # read at call time, after huggingface_hub was imported
    assert W.resolve_weights("private", "face").read_bytes() == ckpt_bytes["vr"]
    assert fake.requests[-1].authorization == "Bearer hf_test_secret"


def test_server_down_with_cached_file_is_fast(monkeypatch, tmp_path, fake, ckpt_bytes) -> None:
    rev = fake.add_commit(REPO, {FILE: ckpt_bytes["vr"]})
    use(monkeypatch, tmp_path, fake, [entry_dict("face-t", ckpt_bytes["vr"], repo_id=REPO, revision=rev, filename=FILE, default=True)])
    W.resolve_weights(None, "face")
    fake.stop()
    t0 = time.perf_counter()
    desc = W.load_model(None, "face")
    elapsed = time.perf_counter() - t0
    assert desc.task == "face"
    assert elapsed < 2.0, f"cached load with the Hub down took {elapsed:.2f} s"


def test_connection_errors_map_to_a_fix() -> None:
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    s = vhub.HubSettings(endpoint="http://hub.invalid", cache_dir=Path("/c"), token=None, offline=False)
    err = LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
    err.__cause__ = httpx2.ConnectError("connection refused")
    msg = vhub.hub_error_message(err, name="m", repo_id="o/r", revision="a" * 40, filename="f.safetensors", settings=s)
    assert msg == ("m: cannot reach http://hub.invalid and o/r@aaaaaaaaaaaa is not in the Hub cache (/c); check the "
                   "network or HF_ENDPOINT, or pass --model PATH")
    msg = vhub.hub_error_message(OfflineModeIsEnabled("x"), name="m", repo_id="o/r", revision="a" * 40,
                                 filename="f.safetensors", settings=s)
    assert "HF_HUB_OFFLINE is set" in msg and "vrrestore weights download m" in msg


def test_cli_download_force_repairs_a_damaged_cache(monkeypatch, tmp_path, fake, ckpt_bytes, capsys) -> None:
    rev = fake.add_commit(REPO, {FILE: ckpt_bytes["vr"]})
    use(monkeypatch, tmp_path, fake, [entry_dict("face-t", ckpt_bytes["vr"], repo_id=REPO, revision=rev, filename=FILE)])

    code, out, _ = cli(monkeypatch, capsys, "weights", "path", "face-t")
    assert code == 3
    code, out, _ = cli(monkeypatch, capsys, "weights", "download", "face-t")
    assert code == 0 and "face-t sha256 verified" in out
    code, out, _ = cli(monkeypatch, capsys, "weights", "path", "face-t")
    cached = Path(out.strip())
    assert code == 0 and cached.read_bytes() == ckpt_bytes["vr"]

    blob = cached.resolve()
    blob.write_bytes(bytes(len(ckpt_bytes["vr"])))  # same size, wrong bytes
    code, out, err = cli(monkeypatch, capsys, "weights", "verify")
    assert code == 3 and "MISMATCH" in out and "weights download face-t --force" in err
    gets = fake.count("GET", "/resolve/")
    code, _, _ = cli(monkeypatch, capsys, "weights", "download", "face-t")
    assert code == 3 and fake.count("GET", "/resolve/") == gets  # no --force: cache trusted, then refused
    code, out, _ = cli(monkeypatch, capsys, "weights", "download", "face-t", "--force")
    assert code == 0 and fake.count("GET", "/resolve/") == gets + 1
    code, out, _ = cli(monkeypatch, capsys, "weights", "verify", "face-t")
    assert code == 0 and "ok" in out and "hub-cache" in out


def test_cli_list_reports_remote_then_cached(monkeypatch, tmp_path, fake, ckpt_bytes, capsys) -> None:
    import json

    rev = fake.add_commit(REPO, {FILE: ckpt_bytes["vr"]})
    use(monkeypatch, tmp_path, fake, [entry_dict("face-t", ckpt_bytes["vr"], repo_id=REPO, revision=rev, filename=FILE)])
    code, out, _ = cli(monkeypatch, capsys, "weights", "list", "--json")
    assert code == 0 and json.loads(out)[0]["availability"] == "remote" and json.loads(out)[0]["path"] is None
    W.resolve_weights("face-t", "face")
    code, out, _ = cli(monkeypatch, capsys, "weights", "list", "--json")
    row = json.loads(out)[0]
    assert row["availability"] == "cached" and row["size_bytes"] == len(ckpt_bytes["vr"]) and row["revision"] == rev
    assert Path(row["path"]).read_bytes() == ckpt_bytes["vr"]
    assert fake.count() == 2  # listing never touches the network


def test_fake_hub_serves_snapshot_download(fake, tmp_path) -> None:
    fake.add_commit(REPO, {FILE: b"abc", "config.json": b"{}"})
    folder = snapshot_download(REPO, revision="main", endpoint=fake.url, cache_dir=str(tmp_path / "snap"))
    assert sorted(p.name for p in Path(folder).iterdir()) == ["config.json", FILE]
    assert fake.count("GET", f"/api/models/{REPO}/revision/main") == 1
    assert fake.count("GET", f"/api/models/{REPO}/tree/") == 1
