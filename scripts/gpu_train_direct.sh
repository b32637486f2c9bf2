#!/usr/bin/env bash
# Train the end-to-end CNN's ensemble members on a lent GPU, in parallel, and leave their finished
# (slim) checkpoints under $OUT. See boneage/training/direct_gpu.py for the whole route:
#
#   here:   python -m boneage.training.direct_gpu pack            # -> .pack/direct_train_256.npz (~40 MB)
#           mkdir -p .whl && pip download --no-deps -d .whl monai==1.6.1   # when the GPU machine lacks MONAI
#   there:  bash scripts/gpu_train_direct.sh                      # carry .pack and .whl
#   here:   cp OUT/narrow/checkpoint*.pt data/models/direct/
#           boneage train direct --epochs $EPOCHS --batch-size $BATCH --lr $LR --members $MEMBERS --seed 0
#
# The shipped direct-cnn-3 came from the defaults below: 2 members x 40 epochs took 3.0 min each, side by
# side, on one H200 (about 4.5 s an epoch; the step loop is bound by Python on the host, not the GPU). Four
# processes side by side slowed to 6.5 s an epoch: size EPOCHS x MEMBERS so every member ends within
# MAX_MINUTES, or it is lost (a member cut short cannot come back slim).
#
# Members of the shipped width train side by side (one process each: a small network leaves the GPU
# mostly idle); WIDE_MEMBERS more members of a wider network train beside them as a candidate.
# Every process stops at MAX_MINUTES. Tested on the CPU with a tiny pack (tests/test_training_direct_gpu.py).
set -uo pipefail
OUT=${OUT:-/tmp/boneage_gpu_out}
PY=${PYTHON:-python3}
PACK=${PACK:-.pack/direct_train_256.npz}
EPOCHS=${EPOCHS:-40}
BATCH=${BATCH:-64}
LR=${LR:-0.004}
MEMBERS=${MEMBERS:-2}
WIDE_MEMBERS=${WIDE_MEMBERS:-0}
WIDE_WIDTHS=${WIDE_WIDTHS:-48 96 192 384}
MAX_MINUTES=${MAX_MINUTES:-4.6}
DEVICE=${DEVICE:-auto}
WORK=${WORK:-/tmp/boneage_direct_gpu}
EXTRA_ARGS=${EXTRA_ARGS:-}   # more `boneage train direct` options for every member (e.g. --size 32 in the CPU test)
mkdir -p "$OUT" "$WORK"
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import monai" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/boneage_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/boneage_site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
$PY -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
common=(--pack "$PACK" --epochs "$EPOCHS" --batch-size "$BATCH" --lr "$LR" --seed 0 --device "$DEVICE"
        --max-minutes "$MAX_MINUTES" --workers 4 --threads 2 --work "$WORK")
# shellcheck disable=SC2206
[ -n "$EXTRA_ARGS" ] && common+=($EXTRA_ARGS)
pids=()
for ((m = 0; m < MEMBERS; m++)); do
  $PY -m boneage.training.direct_gpu train "${common[@]}" --member "$m" --out "$OUT/narrow" > "$WORK/narrow_$m.log" 2>&1 &
  pids+=($!)
done
for ((m = 0; m < WIDE_MEMBERS; m++)); do
  # shellcheck disable=SC2086
  $PY -m boneage.training.direct_gpu train "${common[@]}" --widths $WIDE_WIDTHS --member "$m" --out "$OUT/wide" > "$WORK/wide_$m.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
# One log back (what comes back is limited in number of files); tqdm's carriage returns become lines.
for f in "$WORK"/*.log; do echo "=== $(basename "$f")"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | awk 'NR % 25 == 1 || /epoch"|wrote|Error|error|member|resum|stopped/'; done > "$OUT/train.log"
tail -c 6000 "$OUT/train.log"
ls -la "$OUT"/*/ 2>/dev/null
exit $status
