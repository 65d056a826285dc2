"""Run the real console entry point in-process, so tests see its exit codes and both streams."""

from __future__ import annotations

import sys

import pytest

from vrrestore.cli import main


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``vrrestore ARGS...`` -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["vrrestore", *args])
    try:
        main()
        code = 0
    except SystemExit as ex:
        code = int(ex.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
