#!/usr/bin/env bash
# The one prepared command this project runs on a lent GPU machine (the `device` tool: one H200, about 15 minutes
# of device time per task, every start and idle wait counted). Run from the repository root:
#
#     bash benchmarks/gpu_session.sh            # results (logs, JSON, the trained checkpoints as a tar) in $OUT
#
# 1. `train all --recipe gpu --device cuda` into runs/gpu: the gpu recipe end to end, graded at the end;
# 2. `benchmarks/gpu_check.py --devices cuda`: each stage 200 steps of the fast recipe on CUDA, to set beside the CPU
#    column run on a development machine (`--devices cpu`, then `--merge`);
# 3. `benchmarks/gpu_sync.py`: what the Trainer's per-step host reads (the NaN guard) cost on the GPU.
# Each step has its own time limit (TRAIN_S, CHECK_S, SYNC_S seconds; 0 skips the step) and a failing step does not
# stop the others. The gpu recipe alone, as the next lease should run it: TRAIN_S=540 CHECK_S=0 SYNC_S=0.
# On the lent machine the project's Python packages are the machine's own; open_clip_torch and ftfy travel as wheels
# in .whl/ (see the device tool's README).
set -u
OUT=${OUT:-out/gpu_session}
TRAIN_S=${TRAIN_S:-390}
CHECK_S=${CHECK_S:-110}
SYNC_S=${SYNC_S:-45}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if ! $PY -c "import open_clip" 2>/dev/null && [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1
  nproc
  $PY -c "import platform, torch, open_clip; print(platform.python_version(), torch.__version__, open_clip.__version__,
torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1
} > "$OUT/env.txt"
cat "$OUT/env.txt"

stamp() { echo "[$(date -u +%T)] $*"; }
if [ "$TRAIN_S" -gt 0 ]; then
  stamp "train all --recipe gpu (limit ${TRAIN_S}s)"
  timeout -s TERM "$TRAIN_S" $PY -m dalle2_edu train all --recipe gpu --device cuda --out runs/gpu --no-progress \
    > "$OUT/train.log" 2>&1
  stamp "train exit $?"
  tail -n 25 "$OUT/train.log"
fi

if [ "$CHECK_S" -gt 0 ]; then
  stamp "gpu_check --devices cuda (limit ${CHECK_S}s)"
  timeout -s TERM "$CHECK_S" $PY benchmarks/gpu_check.py --steps 200 --devices cuda --out out/gpu_check_cuda \
    > "$OUT/gpu_check.log" 2>&1
  stamp "gpu_check exit $?"
  cp out/gpu_check_cuda/gpu_check.json "$OUT/" 2>/dev/null
  tail -n 30 "$OUT/gpu_check.log"
fi

if [ "$SYNC_S" -gt 0 ]; then
  stamp "gpu_sync (limit ${SYNC_S}s)"
  timeout -s TERM "$SYNC_S" $PY benchmarks/gpu_sync.py --device cuda --steps 50 --repeats 3 --warmup 10 --out "$OUT" \
    > "$OUT/gpu_sync.log" 2>&1
  stamp "gpu_sync exit $?"
  cat "$OUT/gpu_sync.log"
fi

# The trained stages (weights + JSON + the run's report), without runs/gpu/runs (the Trainer's resumable state and
# the CLIP embedding cache: hundreds of MB, over what the device tool brings back).
tar -cf "$OUT/gpu_run.tar" runs/gpu/*.safetensors runs/gpu/*.json 2>/dev/null
ls -la "$OUT"
stamp done
