#!/usr/bin/env bash
# Device check for a lent GPU machine (no Rust toolchain there): runs the release binary built
# here against that machine's own torch 2.11.0 (CUDA 13). Carry target/release/conclave.
# Writes a short report to $OUT (or ./gpu-check-out).
set -u
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
PY=${TORCH_PYTHON:-/opt/torch/.venv/bin/python}
TORCH_LIB=$("$PY" -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
export LD_LIBRARY_PATH="$TORCH_LIB"
BIN=./target/release/conclave
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  ldd "$BIN" | grep -E "libtorch|libc10" | sed 's/ (0x.*//'
  for run in "cpu logistic-regression" "cuda logistic-regression" "cpu mlp" "cuda mlp"; do
    set -- $run
    echo "== demo --device $1 --model $2"
    start=$(date +%s%N)
    "$BIN" demo --device "$1" --model "$2" --rounds 20 --data-dir "/tmp/demo-$1-$2" 2>&1 | grep -E "coordinator at|final|error" 
    end=$(date +%s%N)
    echo "wall: $(( (end - start) / 1000000 )) ms"
  done
  echo "== --device cuda:7 (absent) must fail clearly"
  "$BIN" demo --device cuda:7 --rounds 1 2>&1 | tail -1
  # The CPU side of the same machine: another CPU model for the mask code's instruction-level
  # dispatch (carry the crypto test binary as ./.device/crypto-tests), and the secure round
  # with more cores than the 2-core development machine has.
  lscpu | grep -E "Model name|^CPU\(s\)"
  echo "AES/AVX-512 flags: $(grep -o -w -E 'aes|vaes|avx2|avx512f|avx512dq|avx512bw|avx512vl' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  if [ -x ./.device/crypto-tests ]; then
    echo "== crypto unit tests (mask dispatch, KATs)"
    ./.device/crypto-tests --test-threads 4 2>&1 | grep -E "test result|FAILED|panicked"
  fi
  for i in 1 2 3; do
    echo "== bench secagg 100 x 1M, c=10, t=6 (run $i)"
    "$BIN" bench secagg --participants 100 --dim 1000000 --committee 10 --threshold 6 2>/dev/null | tail -1
  done
} 2>&1 | tee "$OUT/report.txt"
