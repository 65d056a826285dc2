"""Errors that the CLI turns into one line and an exit code (never a traceback)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WEIGHTS = 3
EXIT_DEVICE = 4
EXIT_INTERRUPTED = 130

# The one wording of the exit codes, shown under `vrrestore face --help` and `vrrestore image --help`.
EXIT_CODES_HELP = (
    "Exit codes: 0 all files done (or skipped), 1 some files failed, 2 usage, 3 weights unavailable, "
    "4 device unavailable, 130 interrupted (Ctrl-C or SIGTERM; finished outputs are kept)."
)


class VRRestoreError(Exception):
    """Base class: ``str(err)`` is a complete one-line message that says what to do."""

    exit_code = EXIT_FAILED


class InputError(VRRestoreError):
    """One input file cannot be read or processed (the batch goes on)."""


class UsageError(VRRestoreError):
    exit_code = EXIT_USAGE


class WeightsError(VRRestoreError):
    """Weights missing, unpublished, corrupt, foreign or unreachable."""

    exit_code = EXIT_WEIGHTS


class CheckpointError(WeightsError):
    """A file that is not a valid vrrestore checkpoint."""


class DeviceError(VRRestoreError):
    exit_code = EXIT_DEVICE


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so cleanup (temp files, partial outputs) runs as for Ctrl-C."""
