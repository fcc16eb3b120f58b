#!/usr/bin/env bash
# The CUDA checks of the own-images work, prepared to run as one command on a GPU machine (about 7 minutes on
# an H100), from the repository root, with the machine's own python3 (torch, onnx, onnxruntime, scikit-image):
#
#   bash benchmarks/gpu_checks.sh
#
# 1. the precision tests and a short (6-epoch, 96-image) draem fit on CUDA: a crash shows here, in seconds;
# 2. draem's training step in fp32 / bf16 autocast x contiguous / channels-last at 128 and 256 px
#    (benchmarks/precision_step.py --device cuda): whether `--precision auto` should pick bf16 there too;
# 3. the texture benchmark's default fit on CUDA for each texture (recipe default-cuda): its time, against the
#    2-core CPU fits in benchmarks/results/textures.md, and its figures.
# Results go to benchmarks/results (and to $OUT where the device tool sets it, to come back).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
back() {
  [ -n "${OUT:-}" ] || return 0
  cp benchmarks/results/precision_step_cuda.* benchmarks/results/textures.* "$OUT"/ 2>/dev/null
  cp /tmp/aeguard-gpu-smoke.log "$OUT"/ 2>/dev/null
  return 0
}
trap back EXIT

nvidia-smi -L
"$PY" -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'onnxruntime', onnxruntime.__version__)" || exit 1

echo "== 1. tests and a short CUDA fit"
"$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_loop.py || echo "(tests failed)"
work=$(mktemp -d)
"$PY" -c "from pathlib import Path; from benchmarks.texture_defects import write_texture_folder; \
write_texture_folder('brick', Path('$work/brick'), seed=0)" || exit 1
"$PY" -m aeguard.cli.main fit --data "$work/brick" --out "$work/smoke" --device cuda --epochs 6 --max-images 96 \
  >/tmp/aeguard-gpu-smoke.log 2>&1
status=$?
tail -n 12 /tmp/aeguard-gpu-smoke.log
# 6: the short fit collapsed, which it may: it still trained on CUDA (the export, then, was not reached)
[ $status -eq 0 ] || [ $status -eq 6 ] || { echo "the CUDA fit failed ($status): see aeguard-gpu-smoke.log"; exit 1; }

echo "== 2. training step variants"
"$PY" -m benchmarks.precision_step --device cuda

echo "== 3. the texture benchmark's default fit on CUDA"
for texture in brick ihc retina; do  # one at a time: a texture scikit-image cannot open there skips alone
  timeout 240 "$PY" -m benchmarks.textures --work "$work" --textures "$texture" --recipes default-cuda \
    || echo "($texture: failed or timed out)"
done
