#!/usr/bin/env bash
# Every CUDA path and the CUDA benches in one short call on a machine with a GPU; prints one summary.
#
#   bash bench/gpu_check.sh            # from the repository root; results under $OUT or out/gpu_check
#
# 1. the CUDA tests (each also runs the CPU side and compares), 2. bench/prism_vs_open3d.py --device cuda
# (Open3D itself on the CPU, as its wheel ships), 3. bench/node_latency.py --device cuda (needs rclpy).
# Python packages the machine lacks can be put as wheels in .whl/ (installed with --no-index into
# /tmp/site); a step whose imports are missing is reported as skipped with the missing module named.
# Budget: about 8 minutes in all (tests 3, prism_vs_open3d 2.5, node_latency 2.5).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-out/gpu_check}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

summary=()
missing() {  # the modules of "$@" that do not import here
  local out=()
  for m in "$@"; do $PY -c "import $m" 2>/dev/null || out+=("$m"); done
  echo "${out[*]}"
}
step() {  # step NAME LIMIT_S NEEDED_MODULES -- command...
  local name=$1 limit=$2 needs=$3; shift 4
  local lack; lack=$(missing $needs)
  if [ -n "$lack" ]; then summary+=("$name: SKIPPED (missing: $lack)"); return; fi
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  local verdict=ok; [ $rc -ne 0 ] && verdict="FAILED (exit $rc, see $OUT_DIR/$name.log)"
  summary+=("$name: $verdict in $((SECONDS - start)) s")
  tail -n 12 "$OUT_DIR/$name.log"
}

$PY - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import warp as wp
    wp.config.log_level = 40
    wp.init()
    print("warp", wp.__version__, [str(d) for d in wp.get_cuda_devices()])
except Exception as error:
    print("warp not available:", error)
EOF

step cuda_tests 180 "torch warp" -- $PY -m pytest -q -p no:cacheprovider -k "cuda" \
  test/test_render.py test/test_map.py test/test_tracking.py test/test_geometry.py test/test_config.py \
  $(ls test/test_kernels_*.py 2>/dev/null)
step prism_vs_open3d 150 "torch warp open3d" -- $PY bench/prism_vs_open3d.py --device cuda \
  --out "$OUT_DIR/prism_vs_open3d"
step node_latency 150 "torch warp rclpy" -- $PY bench/node_latency.py --device cuda --frames 150 --viewers none \
  --resolutions qvga,vga --out "$OUT_DIR/node_latency"

echo
echo "== gpu_check summary =="
for line in "${summary[@]}"; do echo "$line"; done
grep -h "^prism \|^open3d\|^ratios" "$OUT_DIR/prism_vs_open3d.log" 2>/dev/null
grep -h -A4 "^case " "$OUT_DIR/node_latency.log" 2>/dev/null
