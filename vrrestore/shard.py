"""Shards for array jobs: ``--shard I/N`` splits a sorted file list so N processes that never talk to
each other cover every input exactly once.

The list is sorted by input path and file k goes to shard k % N (a stride, not blocks, so folders of
big and small files spread evenly). Every process computes the same list from the same arguments,
so no coordination is needed. Without ``--shard`` the shard comes from the scheduler's environment:
SLURM array jobs, Kubernetes indexed Jobs, or torchrun-style RANK/WORLD_SIZE.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import UsageError

T = TypeVar("T")
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
# Kubernetes sets JOB_COMPLETION_INDEX in indexed Jobs but no count: the pod template must pass the
# Job's .spec.completions in this variable.
K8S_COUNT = "JOB_COMPLETIONS"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``; ``source`` says where it came from (for messages and reports)."""

    index: int
    count: int
    source: str = "--shard"

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        """``03-of-10``: for file names, zero-padded so a folder listing sorts by shard."""
        width = len(str(self.count - 1))
        return f"{self.index:0{width}d}-of-{self.count}"

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's items of an already sorted sequence: every ``count``-th, from ``index``."""
        return list(items[self.index :: self.count])

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "count": self.count, "source": self.source}


def parse_shard(spec: str, source: str = "--shard") -> Shard:
    """``"I/N"`` -> Shard, or UsageError naming ``source`` (``3/2``, ``0/0`` and ``x`` are refused)."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise UsageError(f"{source} {spec}: expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4 for the first of 4 shards")
    index, count = int(m[1]), int(m[2])
    if count < 1:
        raise UsageError(f"{source} {spec}: the shard count must be 1 or more, e.g. 0/4 for the first of 4 shards")
    if index >= count:
        raise UsageError(f"{source} {spec}: shard index {index} is not below the count {count}; shards are numbered 0 to {count - 1}")
    return Shard(index, count, source)


def _int(env: Mapping[str, str], name: str) -> int:
    raw = env[name].strip()
    if not raw.isdigit():
        raise UsageError(f"{name}={env[name]!r}: not a whole number; fix the variable or pass --shard INDEX/COUNT")
    return int(raw)


def _need(env: Mapping[str, str], have: str, need: str, hint: str) -> None:
    if need not in env:
        raise UsageError(f"{have} is set but {need} is not; {hint}, or pass --shard INDEX/COUNT")


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard an array scheduler assigned to this process, or None when none is set.

    Looked at in this order: SLURM_ARRAY_TASK_ID (index relative to SLURM_ARRAY_TASK_MIN, in steps of
    SLURM_ARRAY_TASK_STEP) with SLURM_ARRAY_TASK_COUNT; JOB_COMPLETION_INDEX with JOB_COMPLETIONS; RANK
    with WORLD_SIZE.
    """
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env:
        _need(env, "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "run inside a SLURM array job (sbatch --array)")
        task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
        low = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        step = max(1, _int(env, "SLURM_ARRAY_TASK_STEP")) if "SLURM_ARRAY_TASK_STEP" in env else 1
        index, off = divmod(task - low, step)
        if off or not 0 <= index < count:
            raise UsageError(
                f"SLURM_ARRAY_TASK_ID={task}: not one of {count} evenly spaced array indices from {low}; "
                "use --array=0-N or pass --shard INDEX/COUNT"
            )
        return Shard(index, count, "SLURM_ARRAY_TASK_ID")
    if "JOB_COMPLETION_INDEX" in env:
        _need(env, "JOB_COMPLETION_INDEX", K8S_COUNT, "set it to the Job's .spec.completions in the pod template")
        return _from_pair(_int(env, "JOB_COMPLETION_INDEX"), _int(env, K8S_COUNT), "JOB_COMPLETION_INDEX/JOB_COMPLETIONS")
    if "RANK" in env:
        _need(env, "RANK", "WORLD_SIZE", "set WORLD_SIZE to the number of processes")
        return _from_pair(_int(env, "RANK"), _int(env, "WORLD_SIZE"), "RANK/WORLD_SIZE")
    return None


def _from_pair(index: int, count: int, source: str) -> Shard:
    """A shard from two variables; an impossible pair says which variables to fix."""
    try:
        return parse_shard(f"{index}/{count}", source)
    except UsageError as err:
        raise UsageError(f"{err}; fix the variables or pass --shard INDEX/COUNT") from None


def resolve_shard(spec: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """``--shard`` if given (it wins over the environment), else :func:`shard_from_env`."""
    if spec is not None:
        return parse_shard(spec)
    return shard_from_env(env)
