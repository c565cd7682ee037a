#!/usr/bin/env bash
# The checks and timings that need a GPU (issues 3 and 10; what needs none runs in make test), for one call of the device tool or any CUDA
# machine. Runs from the checkout with the machine's own torch and triton (nothing to install):
#
#   bash benchmarks/gpu.sh [tests|compile|bench|all]      # files go to $OUT (default /tmp/adaptact-gpu)
#
#   tests    the backend-equality, saved-bytes and pass-count tests on CUDA tensors
#   compile  torch.compile(fullgraph) of every Triton path against eager, and torch.library.opcheck
#   bench    `adaptact bench-kernels` at the issue's shape (64x128x56x56) and at transformer token shapes
#            (8x512x768, 4x1024x3072, --channel-dim -1), float32 and bfloat16
set -uo pipefail
stage=${1:-all}
OUT=${OUT:-/tmp/adaptact-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD" ADAPTACT_TEST_DEVICE=cuda
status=0

python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())" | tee "$OUT/device.txt" || exit 1

if [[ $stage == tests || $stage == all ]]; then
    python3 -m pytest -q -p no:cacheprovider tests/ops --ignore=tests/ops/test_triton_compile.py \
        -k "triton and not compiles and not opcheck" \
        >"$OUT/tests.txt" 2>&1 || status=1
    tail -n 5 "$OUT/tests.txt"
fi
if [[ $stage == compile || $stage == all ]]; then
    python3 -m pytest -q -p no:cacheprovider tests/ops -k "compiles or opcheck" >"$OUT/compile.txt" 2>&1 || status=1
    tail -n 5 "$OUT/compile.txt"
fi
if [[ $stage == bench || $stage == all ]]; then
    python3 -m adaptact bench-kernels --shape 64,128,56,56 --dtypes float32,bfloat16 --device cuda \
        --json "$OUT/bench-kernels.json" | tee "$OUT/bench-kernels.txt" || status=1
    # transformer tokens (B, T, C), channels last: a GPT-2-small MLP and a wide LLaMA-style one
    for shape in 8,512,768 4,1024,3072; do
        python3 -m adaptact bench-kernels --shape $shape --channel-dim -1 --dtypes float32,bfloat16 --device cuda \
            --json "$OUT/bench-kernels-tokens-${shape//,/x}.json" | tee "$OUT/bench-kernels-tokens-${shape//,/x}.txt" \
            || status=1
    done
fi
exit $status
