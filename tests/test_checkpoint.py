"""Checkpoint files as a user meets them: readable by others like any file they create, never replaced
unless asked, no temp file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from vrrestore.checkpoint import load_checkpoint, save_checkpoint, write_safetensors
from vrrestore.errors import UsageError
from vrrestore.models import build_model, preset


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("SRRestorer", preset("sr-tiny"))


def test_checkpoint_mode_follows_the_umask_not_0600(tmp_path: Path, model: torch.nn.Module) -> None:
    old = os.umask(0o022)
    try:
        path = save_checkpoint(model, tmp_path / "m.safetensors", dtype="fp16")
        prior = write_safetensors({"w": torch.zeros(2)}, tmp_path / "p.safetensors", {"format": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and stat.S_IMODE(prior.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "p.safetensors"]  # no temp files
    assert load_checkpoint(path).scale == 4


def test_existing_checkpoint_is_kept_unless_overwrite(tmp_path: Path, model: torch.nn.Module) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(UsageError, match=r"m\.safetensors already exists; pass --overwrite to replace it"):
        save_checkpoint(model, path, overwrite=False)
    with pytest.raises(UsageError, match="already exists"):
        write_safetensors({"w": torch.zeros(1)}, path, {}, overwrite=False)
    assert path.read_bytes() == b"keep me"
    save_checkpoint(model, path, overwrite=True)
    assert load_checkpoint(path).scale == 4


def test_a_failed_checkpoint_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Exception):  # noqa: B017 - safetensors refuses non-contiguous/shared tensors its own way
        write_safetensors({"a": torch.zeros(4), "b": "not a tensor"}, tmp_path / "bad.safetensors", {})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
