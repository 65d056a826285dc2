"""Weights registry, resolution order, task checks, `weights import/card/verify/list/path` (issue 6).

Hub traffic is covered in test_hub.py; nothing here opens a socket (HF_ENDPOINT points at a refused port and
every registry entry used here resolves locally).
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from cli_main import run_main
from fakehub import entry_dict, write_registry
from safetensors import safe_open

from vrrestore import weights as W
from vrrestore.cache import cache_dir
from vrrestore.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from vrrestore.errors import WeightsError
from vrrestore.models import build_model, preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN",
                "VRRESTORE_WEIGHTS_DIR", "VRRESTORE_REGISTRY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "vcache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)


def _model(name: str, head: str = "vr") -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset(name), head=head)
    return build_model("FaceRestorer" if name.startswith("face") else "SRRestorer", cfg)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    return {
        "face": save_checkpoint(_model("face-tiny"), d / "face-tiny.safetensors", dtype="fp16"),
        "face_vq": save_checkpoint(_model("face-tiny", "vq"), d / "face-tiny-vq.safetensors", dtype="fp16"),
        "sr": save_checkpoint(_model("sr-tiny"), d / "sr-tiny.safetensors", dtype="fp16"),
    }


cli = run_main


def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entries: list[dict[str, object]]) -> Path:
    path = write_registry(tmp_path / "registry.json", entries)
    monkeypatch.setenv("VRRESTORE_REGISTRY", str(path))
    return path


# ------------------------------------------------------------------------------------ shipped registry


def test_the_packaged_registry_is_the_only_registry_and_ships_in_the_wheel() -> None:
    """One source of truth: vrrestore/weights.json (package data); no second copy anywhere in the tree."""
    import tomllib

    skip = {".git", ".venv", ".venv-ci", "build", "dist", "node_modules"}
    copies = sorted(
        str(p.relative_to(ROOT)) for p in ROOT.rglob("weights.json")
        if not skip.intersection(p.relative_to(ROOT).parts) and not any(part.endswith(".egg-info") for part in p.parts)
    )
    assert copies == ["vrrestore/weights.json"]
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    assert "weights.json" in package_data["vrrestore"]
    assert W.load_registry() == W.load_registry(ROOT / "vrrestore" / "weights.json")


def test_shipped_registry_holds_the_release_models() -> None:
    """vrrestore/weights.json lists the release schedules' models; `train publish` fills an entry from
    progress.json (bundled, hash, size, metrics) once its chain is trained. The face models are."""
    from vrrestore.train.release import SCHEDULES

    reg = W.load_registry()  # importlib.resources: vrrestore/weights.json
    assert list(reg) == ["vr-face-s", "vq-face-s", "vr-sr-x4-s", "vq-sr-x4-s"]
    for name, e in reg.items():
        sch = SCHEDULES[e.task]
        assert sch.release[e.head] == name and e.default == (e.head == "vr")
        assert e.architecture == {"face": "FaceRestorer", "sr": "SRRestorer"}[e.task]
        assert e.config().head == e.head and e.config() == dataclasses.replace(preset(e.preset), head=e.head, **e.overrides)
        if e.task == "face" or e.published:  # trained here and bundled: offline by default
            assert e.published and e.bundled == f"bundled/{name}.safetensors" and e.repo_id is None
            assert e.preset == sch.preset and e.license == sch.licence and e.data == sch.data_note
            path = W.resolve_entry(e)
            assert path.stat().st_size == e.size_bytes and hashlib.sha256(path.read_bytes()).hexdigest() == e.sha256
            assert e.metrics["images_seen"] > 0 and e.metrics["cpu_hours"] > 0 and "psnr_w0" in e.metrics
            trained = [u.name for u in sch.chain(e.head) if u.stage != "prior"]
            assert [part.split()[0] for part in e.metrics["recipes"].split(" / ")] == trained
        else:
            assert e.status == "unpublished" and (e.repo_id, e.revision, e.sha256, e.size_bytes, e.bundled) == (None,) * 5
    assert [s for _, s in W.list_entries()] == ["bundled" if e.published else "unpublished" for e in reg.values()]


def test_default_models_load_offline_and_a_missing_default_is_said_plainly(monkeypatch, tmp_path) -> None:
    desc = W.load_model(None, "face")
    assert desc.task == "face" and desc.head == "vr" and desc.fixed_size == 256
    if W.load_registry()["vr-sr-x4-s"].published:
        sr = W.load_model(None, "sr")
        assert sr.task == "sr" and sr.head == "vr" and sr.scale == 4
    registry(monkeypatch, tmp_path, [entry_dict("sr-u", None, task="sr", preset="sr-tiny", default=True)])
    with pytest.raises(WeightsError) as info:
        W.load_model(None, "sr")
    assert str(info.value).startswith("no trained sr model is available yet (sr-u is unpublished); pass --model PATH to a checkpoint")
    assert info.value.exit_code == 3


def test_cli_on_the_shipped_registry(monkeypatch, capsys, tmp_path) -> None:
    reg = W.load_registry()
    code, out, _ = cli(monkeypatch, capsys, "weights", "list")
    assert code == 0 and out.count("bundled") >= 2 and "vr-face-s (default)" in out and "vq-sr-x4-s" in out
    code, out, _ = cli(monkeypatch, capsys, "weights", "list", "--json")
    rows = json.loads(out)
    assert [(r["name"], r["availability"], r["repo_id"]) for r in rows] == [
        (n, "bundled" if e.published else "unpublished", None) for n, e in reg.items()
    ]
    code, out, _ = cli(monkeypatch, capsys, "weights", "path", "vr-face-s")
    assert code == 0 and out.strip().endswith("vr-face-s.safetensors")
    code, _, err = cli(monkeypatch, capsys, "weights", "path", "vr-face-xl")
    assert code == 2 and "unknown model 'vr-face-xl'; choose one of vr-face-s, vq-face-s" in err  # a usage error
    registry(monkeypatch, tmp_path, [entry_dict("sr-u", None, task="sr", preset="sr-tiny"),
                                     entry_dict("sr-v", None, task="sr", preset="sr-tiny", head="vq")])
    for args in (["download", "sr-u"], ["verify", "sr-v"]):
        code, out, err = cli(monkeypatch, capsys, "weights", *args)
        assert code == 3 and out == "" and f"{args[1]} is unpublished (no trained weights exist yet)" in err


def test_unknown_or_wrong_task_name_is_a_usage_error(monkeypatch, capsys, tmp_path) -> None:
    from vrrestore.errors import UsageError

    with pytest.raises(UsageError, match="unknown model 'vr-face-xl'"):
        W.load_model("vr-face-xl", "face")
    with pytest.raises(UsageError, match="vr-sr-x4-s is an sr model; `vrrestore face` needs a face model"):
        W.load_model("vr-sr-x4-s", "face")
    for args in (["download", "nope"], ["verify", "nope"], ["card", "nope", "-o", str(tmp_path)]):
        code, _, err = cli(monkeypatch, capsys, "weights", *args)
        assert code == 2 and "unknown model 'nope'" in err, args


def test_weights_help_names_only_commands_that_exist(monkeypatch, capsys) -> None:
    code, out, _ = cli(monkeypatch, capsys, "weights", "--help")
    import re

    assert code == 0 and not re.search(r"\bpublish\b", out.lower())  # there is no publish command
    for command in ("list", "download", "verify", "path", "card", "import"):
        assert command in out


# ------------------------------------------------------------------------------------------- registry


def _good(tmp_path: Path) -> dict[str, object]:
    return entry_dict("m", b"x" * 10, repo_id="o/r", revision="a" * 40)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"revision": "main"}, "revision must be a 40-hex commit sha, never a branch"),
        ({"sha256": "abc"}, "sha256 must be the 64 lower-case hex digits"),
        ({"status": "unpublished"}, "an unpublished entry must have null repo_id, revision, sha256, size_bytes"),
        ({"preset": "face-xxl"}, "unknown preset 'face-xxl'"),
        ({"preset": "sr-tiny"}, "preset sr-tiny is not a face preset"),
        ({"architecture": "SRRestorer"}, "a face model has architecture FaceRestorer"),
        ({"head": "hard"}, "head must be one of vq, soft, vr, direct"),
        ({"bundled": "../evil.safetensors"}, "bundled must be a path inside the package"),
        ({"extra": 1}, "unknown fields extra"),
        ({"filename": "m.pth"}, "filename must be a relative path ending in .safetensors"),
        ({"bundled": "bundled/m.safetensors", "size_bytes": (16 << 20) + 1}, "a bundled file may be at most 16 MiB"),
        ({"overrides": {"head": "vq"}}, "overrides must be an object of top-level config fields other than head and prior"),
        ({"overrides": {"wings": 2}}, "overrides: unknown FaceConfig fields: wings"),
        ({"overrides": {"out_fuse": "false"}}, "overrides: out_fuse must be true or false, like the preset's True"),
        ({"overrides": {"n_layers": True}}, "overrides: n_layers must be an integer, like the preset's 2"),
    ],
)
def test_registry_validation(tmp_path, change, message) -> None:
    entry = {**_good(tmp_path), **change}
    path = write_registry(tmp_path / "r.json", [entry])
    with pytest.raises(WeightsError, match=message.replace("(", r"\(")) as info:
        W.load_registry(path)
    assert str(info.value).startswith(f"{path}: model 'm': ")


def test_registry_file_level_errors(tmp_path, monkeypatch) -> None:
    two = [entry_dict("a", None, default=True), entry_dict("b", None, default=True)]
    with pytest.raises(WeightsError, match=r"several default face models \(a, b\)"):
        W.load_registry(write_registry(tmp_path / "r.json", two))
    with pytest.raises(WeightsError, match="listed twice"):
        W.load_registry(write_registry(tmp_path / "r.json", [entry_dict("a", None), entry_dict("a", None)]))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable weights registry"):
        W.load_registry(tmp_path / "bad.json")
    monkeypatch.setenv("VRRESTORE_REGISTRY", str(tmp_path / "absent.json"))
    with pytest.raises(WeightsError, match="weights registry not found; unset VRRESTORE_REGISTRY"):
        W.load_registry()
    assert list(W.load_registry(write_registry(tmp_path / "ok.json", [entry_dict("z", None)]))) == ["z"]  # path beats env


# ----------------------------------------------------------------------------------------- resolution


def test_explicit_paths_and_task_checks(ckpts, tmp_path) -> None:
    desc = W.load_model(str(ckpts["face"]), "face")
    assert (desc.task, desc.architecture, desc.head) == ("face", "FaceRestorer", "vr")
    assert W.load_model(str(ckpts["sr"]), "sr").scale == 4
    with pytest.raises(WeightsError) as info:
        W.load_model(str(ckpts["sr"]), "face")
    assert str(info.value) == "sr-tiny.safetensors is an sr model; `vrrestore face` needs a face model"
    with pytest.raises(WeightsError) as info:
        W.load_model(str(ckpts["face"]), "sr")
    assert str(info.value) == "face-tiny.safetensors is a face model; `vrrestore image` needs an sr model"

    pth = tmp_path / "gfpgan.pth"
    torch.save({"w": torch.zeros(1)}, pth)
    with pytest.raises(WeightsError, match=r"only \.safetensors checkpoints are loaded .*`vrrestore weights import .*gfpgan\.pth -o gfpgan\.safetensors"):
        W.resolve_weights(str(pth), "face")
    with pytest.raises(WeightsError, match=r"missing\.safetensors: no such file"):
        W.resolve_weights(str(tmp_path / "missing.safetensors"), "face")
    with pytest.raises(WeightsError, match="is a folder"):
        W.resolve_weights(str(tmp_path) + "/", "face")


def test_registry_name_for_the_other_task_is_refused(monkeypatch, tmp_path, ckpts) -> None:
    registry(monkeypatch, tmp_path, [entry_dict("face-t", None, default=True), entry_dict("sr-t", None, task="sr", preset="sr-tiny")])
    from vrrestore.errors import UsageError

    with pytest.raises(UsageError) as info:
        W.load_model("sr-t", "face")
    assert str(info.value) == "sr-t is an sr model; `vrrestore face` needs a face model (e.g. face-t)"


def test_weights_dir_beats_bundled_and_is_verified(monkeypatch, tmp_path, ckpts, capsys) -> None:
    data = ckpts["face"].read_bytes()
    pkg = tmp_path / "pkg"
    (pkg / "bundled").mkdir(parents=True)
    shutil.copy(ckpts["face"], pkg / "bundled" / "face-t.safetensors")
    monkeypatch.setattr(W, "_package_files", lambda: pkg)
    registry(monkeypatch, tmp_path, [
        entry_dict("face-t", data, repo_id="o/never-contacted", revision="b" * 40, bundled="bundled/face-t.safetensors", default=True),
    ])
    assert W.list_entries()[0][1] == "bundled"
    assert W.resolve_weights(None, "face") == pkg / "bundled" / "face-t.safetensors"
    assert W.load_model("face-t", "face").metadata["registry_name"] == "face-t"

    wdir = tmp_path / "wdir"
    wdir.mkdir()
    shutil.copy(ckpts["face"], wdir / "face-t.safetensors")
    monkeypatch.setenv("VRRESTORE_WEIGHTS_DIR", str(wdir))
    assert W.resolve_weights("face-t", "face") == wdir / "face-t.safetensors"
    code, out, _ = cli(monkeypatch, capsys, "weights", "verify")
    assert code == 0 and "weights-dir" in out and "bundled" in out and "MISMATCH" not in out

    # A different file in the weights dir is refused (no silent fall-back to the bundled copy) and kept.
    shutil.copy(ckpts["sr"], wdir / "face-t.safetensors")
    assert W.entry_state(W.load_registry()["face-t"])[0] == "invalid"  # what `list` says matches what loading does
    with pytest.raises(WeightsError, match=r"face-t\.safetensors: \d+ bytes but face-t should be \d+ .*nothing was deleted"):
        W.load_model(None, "face")
    assert (wdir / "face-t.safetensors").read_bytes() == ckpts["sr"].read_bytes()
    code, out, err = cli(monkeypatch, capsys, "weights", "verify", "face-t")
    assert code == 3 and "MISMATCH" in out and "weights-dir" in out


def test_bundled_file_with_wrong_bytes_is_refused(monkeypatch, tmp_path, ckpts) -> None:
    data = ckpts["face"].read_bytes()
    pkg = tmp_path / "pkg"
    (pkg / "bundled").mkdir(parents=True)
    (pkg / "bundled" / "face-t.safetensors").write_bytes(bytes(len(data)))
    monkeypatch.setattr(W, "_package_files", lambda: pkg)
    registry(monkeypatch, tmp_path, [entry_dict("face-t", data, bundled="bundled/face-t.safetensors", default=True)])
    with pytest.raises(WeightsError, match=r"sha256 [0-9a-f]{16}\.\.\. does not match face-t's"):
        W.load_model(None, "face")


def test_unpublished_entry_uses_a_file_in_the_weights_dir(monkeypatch, tmp_path, ckpts, capsys) -> None:
    registry(monkeypatch, tmp_path, [entry_dict("face-t", None, default=True)])
    with pytest.raises(WeightsError, match=r"no trained face model is available yet \(face-t is unpublished\)"):
        W.load_model(None, "face")
    monkeypatch.setenv("VRRESTORE_WEIGHTS_DIR", str(ckpts["face"].parent))
    shutil.copy(ckpts["face"], ckpts["face"].parent / "face-t.safetensors")
    try:
        assert W.list_entries()[0][1] == "cached"
        assert W.load_model(None, "face").head == "vr"
        code, out, _ = cli(monkeypatch, capsys, "weights", "path", "face-t")
        assert code == 0 and out == f"{ckpts['face'].parent / 'face-t.safetensors'}\n"
    finally:
        (ckpts["face"].parent / "face-t.safetensors").unlink()


def test_mislabelled_registry_file_is_refused(monkeypatch, tmp_path, ckpts) -> None:
    data = ckpts["face"].read_bytes()  # head vr, registry says vq (hash matches the file)
    wdir = tmp_path / "w"
    wdir.mkdir()
    shutil.copy(ckpts["face"], wdir / "face-t.safetensors")
    monkeypatch.setenv("VRRESTORE_WEIGHTS_DIR", str(wdir))
    registry(monkeypatch, tmp_path, [entry_dict("face-t", data, repo_id="o/r", revision="c" * 40, head="vq")])
    with pytest.raises(WeightsError, match=r"the checkpoint is not face-t \(FaceRestorer face-tiny, head vq\) but FaceRestorer head vr"):
        W.load_model("face-t", "face")


def test_overrides_pin_a_file_trained_before_its_preset_grew_a_block(monkeypatch, tmp_path) -> None:
    """face-tiny has OutputFuse now; a file written before it (no out_fuse in its config) loads through
    an entry with overrides {"out_fuse": false}, and is refused by one without them."""
    from safetensors.torch import load_file, save_file

    old_cfg = dataclasses.replace(preset("face-tiny"), out_fuse=False)
    torch.manual_seed(0)
    path = save_checkpoint(build_model("FaceRestorer", old_cfg), tmp_path / "w" / "old.safetensors")
    meta = read_metadata(path)
    cfg = json.loads(meta["config"])
    del cfg["out_fuse"]  # as written before the field existed
    save_file(load_file(str(path)), str(path), metadata={**meta, "config": json.dumps(cfg)})
    assert W.config_overrides("face-tiny", cfg) == {"out_fuse": False}
    assert W.config_overrides("face-tiny", json.loads(read_metadata(save_checkpoint(
        build_model("FaceRestorer", preset("face-tiny")), tmp_path / "new.safetensors"))["config"])) == {}
    with pytest.raises(ValueError, match="its prior geometry is not preset face-cpu's"):
        W.config_overrides("face-cpu", cfg)
    data = path.read_bytes()
    monkeypatch.setenv("VRRESTORE_WEIGHTS_DIR", str(path.parent))
    for name, overrides, ok in (("pinned", {"out_fuse": False}, True), ("unpinned", {}, False)):
        shutil.copy(path, path.parent / f"{name}.safetensors")
        entry = {**entry_dict(name, data, repo_id="o/r", revision="d" * 40), "overrides": overrides}
        registry(monkeypatch, tmp_path, [entry])
        if ok:
            desc = W.load_model(name, "face")
            assert desc.model.out_fuse is None
        else:
            with pytest.raises(WeightsError, match="the checkpoint is not unpinned"):
                W.load_model(name, "face")


def test_list_never_says_cached_for_a_file_that_loading_refuses(monkeypatch, tmp_path, ckpts, capsys) -> None:
    wdir = tmp_path / "w"
    wdir.mkdir()
    monkeypatch.setenv("VRRESTORE_WEIGHTS_DIR", str(wdir))
    # an unpublished entry (no hash to compare) with a file of another preset in the weights dir
    registry(monkeypatch, tmp_path, [entry_dict("face-t", None, default=True)])
    shutil.copy(ckpts["sr"], wdir / "face-t.safetensors")
    with pytest.raises(WeightsError):
        W.load_model("face-t", "face")
    code, out, _ = cli(monkeypatch, capsys, "weights", "list")
    assert code == 0 and "invalid" in out and "the checkpoint is not face-t" in out
    assert W.list_entries()[0][1] == "invalid"
    code, out, _ = cli(monkeypatch, capsys, "weights", "list", "--json")
    row = json.loads(out)[0]
    assert row["availability"] == "invalid" and "the checkpoint is not face-t" in row["problem"]
    (wdir / "face-t.safetensors").write_bytes(b"not a checkpoint")
    assert W.entry_state(W.load_registry()["face-t"])[0] == "invalid"
    shutil.copy(ckpts["face"], wdir / "face-t.safetensors")  # the right file
    assert W.entry_state(W.load_registry()["face-t"]) == ("cached", None)
    assert json.loads(cli(monkeypatch, capsys, "weights", "list", "--json")[1])[0]["problem"] is None


# ------------------------------------------------------------------------------------------- import


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_import_roundtrip_with_params_ema_wrapper(monkeypatch, tmp_path, capsys, legacy) -> None:
    model = _model("face-tiny")
    src = tmp_path / "user.pth"
    torch.save({"params_ema": model.state_dict(), "iter": 5}, src, _use_new_zipfile_serialization=not legacy)
    out = tmp_path / "user.safetensors"
    code, _, err = cli(monkeypatch, capsys, "weights", "import", str(src), "-o", str(out), "--preset", "face-tiny", "--head", "vr")
    assert code == 0 and "wrote" in err
    meta = read_metadata(out)
    assert meta["dtype"] == "fp32" and meta["head"] == "vr" and json.loads(meta["training"])["imported_from"] == "user.pth"
    assert json.loads(meta["training"])["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    loaded = load_checkpoint(out).model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v), k
    assert W.load_model(str(out), "face").head == "vr"


def test_import_state_dict_wrapper_module_prefix_dtype_and_overwrite(monkeypatch, tmp_path, capsys) -> None:
    model = _model("sr-tiny", "vq")
    src = tmp_path / "sr.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, src)
    out = tmp_path / "sr.safetensors"
    args = ["weights", "import", str(src), "-o", str(out), "--preset", "sr-tiny", "--head", "vq", "--dtype", "fp16"]
    assert cli(monkeypatch, capsys, *args)[0] == 0
    with safe_open(str(out), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and "already exists; pass --overwrite" in err
    mtime = out.stat().st_mtime_ns
    assert cli(monkeypatch, capsys, *args, "--overwrite")[0] == 0
    assert out.stat().st_mtime_ns >= mtime and read_metadata(out)["task"] == "sr"


def test_import_key_mismatch_is_counted(monkeypatch, tmp_path, capsys) -> None:
    src = tmp_path / "sr.pth"
    torch.save(_model("sr-tiny").state_dict(), src)
    code, _, err = cli(monkeypatch, capsys, "weights", "import", str(src), "-o", str(tmp_path / "o.safetensors"),
                       "--preset", "face-tiny", "--head", "vr")
    n_face = len(_model("face-tiny").state_dict())
    assert code == 3
    assert "sr.pth does not fit FaceRestorer preset face-tiny head vr: " in err
    assert f"(of {n_face}); check --preset and --head" in err and "missing keys (e.g. " in err
    assert not (tmp_path / "o.safetensors").exists()


class _SystemMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


class _OpenMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_SystemMarker, _OpenMarker], ids=["os.system", "open"])
@pytest.mark.parametrize("container", ["torch.save", "raw-pickle"])
def test_import_refuses_malicious_pickles(monkeypatch, tmp_path, capsys, payload, container) -> None:
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    evil = {"params": {"weight": torch.zeros(2)}, "hook": payload(marker)}
    if container == "torch.save":
        torch.save(evil, src)
    else:
        src.write_bytes(pickle.dumps(evil, protocol=2))
    code, out, err = cli(monkeypatch, capsys, "weights", "import", str(src), "-o", str(tmp_path / "o.safetensors"),
                         "--preset", "face-tiny", "--head", "vr")
    assert code == 3 and "refused" in err and "nothing in it was run" in err
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists()


def test_import_rejects_garbage_and_missing_files(tmp_path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(WeightsError, match="junk.pth: "):
        W.import_checkpoint(junk, tmp_path / "o.safetensors", preset="face-tiny", head="vr")
    with pytest.raises(WeightsError, match="no such file"):
        W.import_checkpoint(tmp_path / "nope.pth", tmp_path / "o.safetensors", preset="face-tiny", head="vr")


# ------------------------------------------------------------------------------------- card / verify


def test_card_writes_hub_front_matter(monkeypatch, tmp_path, capsys) -> None:
    out_dir = tmp_path / "card"
    registry(monkeypatch, tmp_path, [entry_dict("vr-sr-u", None, task="sr", preset="sr-tiny", license="other")])
    code, out, _ = cli(monkeypatch, capsys, "weights", "card", "vr-sr-u", "-o", str(out_dir))  # unpublished
    readme = out_dir / "README.md"
    assert code == 0 and out.strip() == str(readme)
    text = readme.read_text()
    front, body = text.split("\n---\n", 1)
    lines = front.splitlines()
    assert lines[0] == "---" and "license: other" in lines and "library_name: vrrestore" in lines
    assert "pipeline_tag: image-to-image" in lines and "tags:" in lines and "- vector-regression" in lines
    assert 'Zheng et al. 2025, "Rethinking the Role of Vector Quantization for Blind Image Restoration"' in body
    assert "Status: unpublished" in body and "vrrestore image INPUT --model vr-sr-u" in body
    assert "restorer = Restorer.from_pretrained('vr-sr-u')" in body
    code, _, err = cli(monkeypatch, capsys, "weights", "card", "vr-sr-u", "-o", str(out_dir))
    assert code == 2 and "pass --overwrite" in err
    registry(monkeypatch, tmp_path, [entry_dict("sr-t", b"abc", repo_id="o/r", revision="d" * 40, task="sr", preset="sr-tiny")])
    assert cli(monkeypatch, capsys, "weights", "card", "sr-t", "-o", str(out_dir), "--overwrite")[0] == 0
    text = readme.read_text()
    assert "license: apache-2.0" in text and hashlib.sha256(b"abc").hexdigest() in text and "| psnr | 1.5 |" in text
    assert "vrrestore image INPUT --model sr-t" in text and "Status: unpublished" not in text


def test_verify_path(monkeypatch, tmp_path, ckpts, capsys) -> None:
    digest = hashlib.sha256(ckpts["face"].read_bytes()).hexdigest()
    code, out, _ = cli(monkeypatch, capsys, "weights", "verify", str(ckpts["face"]))
    assert code == 0 and digest in out and "not a registry file" in out and "FaceRestorer" in out
    registry(monkeypatch, tmp_path, [entry_dict("face-t", ckpts["face"].read_bytes(), repo_id="o/r", revision="e" * 40,
                                                filename="face-tiny.safetensors")])
    code, out, _ = cli(monkeypatch, capsys, "weights", "verify", str(ckpts["face"]))
    assert code == 0 and "matches registry model face-t" in out
    other = tmp_path / "face-tiny.safetensors"
    shutil.copy(ckpts["face_vq"], other)
    code, _, err = cli(monkeypatch, capsys, "weights", "verify", str(other))
    assert code == 3 and "does not match face-t's" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    assert cli(monkeypatch, capsys, "weights", "verify", str(junk))[0] == 3


def test_cache_dir_precedence(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("VRRESTORE_CACHE")
    assert cache_dir("bundled", create=True) == tmp_path / "x" / "vrrestore" / "bundled" and (tmp_path / "x" / "vrrestore" / "bundled").is_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "vrrestore"
