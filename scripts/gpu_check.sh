#!/usr/bin/env bash
# The CUDA checks of the serving engine, as one script for a machine with a GPU (e.g. the device tool's):
# install, then the mixed-batch correctness tests on cuda, then the serving benchmark on cuda in float32 and
# bfloat16. Output and the benchmark tables go to ${OUT:-bench/results/gpu}.
#   bash scripts/gpu_check.sh [extra bench.serving arguments]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"

bash scripts/install.sh >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
"$PYTHON" - <<'PY' | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
PY
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || { echo "no CUDA device"; exit 1; }

"$PYTHON" -c 'from app.engine.formats.bundled import ensure_bundled_model; ensure_bundled_model("data/models")' \
  >"$OUT/convert.log" 2>&1 || { tail -20 "$OUT/convert.log"; exit 1; }

# 1. Correctness: a row's logits and text do not depend on its batch, on the GPU (fp32, max abs diff < 1e-4).
PROMPTBANK_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -p no:cacheprovider tests/engine/test_mixed.py \
  tests/engine/test_batcher.py 2>&1 | tee "$OUT/tests.log" | tail -15
status=${PIPESTATUS[0]}

# 2. The benchmark, float32 then bfloat16 (the converted model is made by the first run).
"$PYTHON" -m bench.serving --device cuda --dtype float32 --out "$OUT/serving-float32.md" "$@" \
  >"$OUT/bench-float32.log" 2>&1
tail -40 "$OUT/serving-float32.md" 2>/dev/null || tail -20 "$OUT/bench-float32.log"
"$PYTHON" -m bench.serving --device cuda --dtype bfloat16 --out "$OUT/serving-bfloat16.md" "$@" \
  >"$OUT/bench-bfloat16.log" 2>&1
tail -40 "$OUT/serving-bfloat16.md" 2>/dev/null || tail -20 "$OUT/bench-bfloat16.log"
exit "$status"
