#!/usr/bin/env bash
# One short GPU training window: scripts/gpu_window.sh TASK MINUTES   (TASK = face | sr)
#
# Why: a GPU window is <= 10 min and only $OUT (8 files x 16 MiB) comes back, so training state between
# windows is the fp16 exports themselves, not run folders (optimiser state is > 100 MB).
#   .carry/            training pack(s): *.tar (read directly) and/or train/ (a folder); VR_DATA overrides
#   .carry/state/      $OUT files of the previous window (TASK-prior/-vr/-vq.safetensors, window.txt)
#   .carry/test/       optional held-out set: lq/ + gt/ pairs, or HQ images (LQ made with the eval recipe)
#   .carry/lpips*.safetensors  optional LPIPS weights (no network on the GPU machine)
# MINUTES is the training budget, split prior : code vr : code vq : fidelity vr : fidelity vq by
# VR_SHARES (default 40 15 15 15 15); vr and vq get the same steps cap, seed and time: equal budget.
# Env: VR_PRESET_FACE / VR_PRESET_SR, VR_BATCH, VR_DEVICE, VR_WORKERS, VR_SEED, VR_CONTINUOUS, VR_RUN, PYTHON.
set -euo pipefail

TASK=${1:?usage: scripts/gpu_window.sh face|sr MINUTES}
MINUTES=${2:?usage: scripts/gpu_window.sh face|sr MINUTES}
case "$TASK" in
  face) PRESET=${VR_PRESET_FACE:-face-s}; TEST_RECIPE=face-eval ;;
  sr) PRESET=${VR_PRESET_SR:-sr-x4-s}; TEST_RECIPE=sr-x4 ;;
  *) echo "error: TASK must be face or sr, not $TASK" >&2; exit 2 ;;
esac
OUT=${OUT:?error: \$OUT (where the exports go) is not set}
PY=${PYTHON:-python3}
BATCH=${VR_BATCH:-8}
DEVICE=${VR_DEVICE:-auto}
WORKERS=${VR_WORKERS:-4}
RUN=${VR_RUN:-/tmp/vr_window_$TASK}
MAX_MB=16
read -r S_PRIOR S_CVR S_CVQ S_FVR S_FVQ <<< "${VR_SHARES:-40 15 15 15 15}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
VR() { "$PY" -m vrrestore "$@"; }
mins() { "$PY" -c "print(round($MINUTES * $1 / 100, 3))"; }
T0=$(date +%s)
mkdir -p "$OUT" "$RUN"

# (a) training data: .tar packs are read directly, folders recursively
DATA=()
if [[ -n "${VR_DATA:-}" ]]; then
  for d in $VR_DATA; do DATA+=(--data "$d"); done
else
  shopt -s nullglob
  for t in .carry/*.tar; do DATA+=(--data "$t"); done
  [[ -d .carry/train ]] && DATA+=(--data .carry/train)
  shopt -u nullglob
fi
[[ ${#DATA[@]} -gt 0 ]] || { echo "error: no training data in .carry/ (*.tar or train/); set VR_DATA" >&2; exit 2; }
LP=$(ls .carry/lpips*.safetensors 2>/dev/null | head -n1 || true)
[[ -n "$LP" ]] && export VRRESTORE_LPIPS_WEIGHTS="$PWD/$LP"

# (b) state of the previous window; seed = window index so each window sees a fresh data order
ST=.carry/state
WIN=0; [[ -f $ST/window.txt ]] && WIN=$(( $(cat $ST/window.txt) + 1 ))
SEED=${VR_SEED:-$WIN}
PRIOR_INIT=(); DISC=${VR_DISC_START:-2000}
if [[ -f $ST/$TASK-prior.safetensors ]]; then PRIOR_INIT=(--init "$ST/$TASK-prior.safetensors"); DISC=${VR_DISC_START:-200}; fi
COMMON=(--batch-size "$BATCH" --device "$DEVICE" --workers "$WORKERS" --seed "$SEED" --steps 100000000 --ckpt-every 100000000)
echo "== window $WIN: $TASK $PRESET, ${MINUTES} min, batch $BATCH, seed $SEED, data ${DATA[*]}, init: ${PRIOR_INIT[*]:-none}"

# (c) prior -> code (vr, vq) -> fidelity (vr, vq)
VR train prior "${DATA[@]}" -o "$RUN/prior" --preset "$PRESET" --max-minutes "$(mins "$S_PRIOR")" \
  --disc-start "$DISC" --continuous-prob "${VR_CONTINUOUS:-0.5}" "${PRIOR_INIT[@]}" "${COMMON[@]}"
VR train export "$RUN/prior/prior.pt" -o "$OUT/$TASK-prior.safetensors"
for H in vr vq; do
  S_C=$([[ $H == vr ]] && echo "$S_CVR" || echo "$S_CVQ"); S_F=$([[ $H == vr ]] && echo "$S_FVR" || echo "$S_FVQ")
  INIT=(); [[ -f $ST/$TASK-$H.safetensors ]] && INIT=(--init "$ST/$TASK-$H.safetensors")
  VR train code "${DATA[@]}" -o "$RUN/$H" --prior "$RUN/prior" --head "$H" --max-minutes "$(mins "$S_C")" "${INIT[@]}" "${COMMON[@]}"
  VR train fidelity "${DATA[@]}" -o "$RUN/$H" --code "$RUN/$H" --max-minutes "$(mins "$S_F")" "${COMMON[@]}"
  VR train export "$RUN/$H/fidelity.pt" -o "$OUT/$TASK-$H.safetensors" --dtype fp16
done
echo "$WIN" > "$OUT/window.txt"

# (d) every file must come back: <= 16 MiB each
for f in "$OUT"/*.safetensors; do
  sz=$(stat -c %s "$f")
  if (( sz > MAX_MB * 1024 * 1024 )); then echo "error: $f is $((sz / 1048576)) MiB > $MAX_MB MiB; it will not come back" >&2; exit 3; fi
done

# (e) benchmark on the held-out set
if [[ -d .carry/test ]]; then
  if [[ -d .carry/test/lq && -d .carry/test/gt ]]; then SRC=(--lq .carry/test/lq --gt .carry/test/gt); else SRC=(--hq .carry/test --recipe "$TEST_RECIPE"); fi
  LPIPS=${VR_LPIPS:-$([[ -n "${VRRESTORE_LPIPS_WEIGHTS:-}" ]] && echo auto || echo none)}
  BDEV=$([[ $DEVICE == auto ]] && echo auto || echo "$DEVICE")
  VR benchmark "${SRC[@]}" --task "$TASK" -m "input,$OUT/$TASK-vr.safetensors,$OUT/$TASK-vq.safetensors" \
    --lpips "$LPIPS" --device "$BDEV" --repeats 2 --json-file "$OUT/bench.json" --markdown "$OUT/bench.md" > "$RUN/bench.txt" 2>&1 \
    || { tail -n 20 "$RUN/bench.txt"; echo "error: benchmark failed" >&2; exit 4; }
fi

# summary (the GPU tool returns only the last 12,000 characters)
echo "== window $WIN done in $(( $(date +%s) - T0 )) s"
"$PY" - "$RUN" "$OUT" <<'PYEOF'
import json, os, sys
run, out = sys.argv[1:]
print(f"{'stage':<14}{'steps':>8}{'sec':>8}{'img/s':>8}  last logged metrics")
rows = {}
for path in ("prior", "vr", "vq"):
    cur = None
    for line in open(os.path.join(run, path, "log.jsonl")):
        e = json.loads(line)
        if e.get("event") == "start":
            cur = f"{e['config']['stage']} {path}"
            rows[cur] = {"step": e.get("step", 0)}
        elif e.get("event") in ("step", "checkpoint") and cur:
            rows[cur].update({k: v for k, v in e.items() if k != "event"})
for name, r in rows.items():
    last = " ".join(f"{k}={r[k]:.4g}" for k in ("loss", "feat_mse", "code_acc", "l1", "perceptual") if k in r)
    print(f"{name:<14}{r.get('step', '-')!s:>8}{r.get('seconds', 0):>8.0f}{r.get('images_per_s', 0):>8.1f}  {last}")
for f in sorted(os.listdir(out)):
    print(f"  $OUT/{f:<28}{os.path.getsize(os.path.join(out, f)) / 2**20:7.2f} MiB")
md = os.path.join(out, "bench.md")
if os.path.exists(md): print(open(md).read()[-4000:])
PYEOF
