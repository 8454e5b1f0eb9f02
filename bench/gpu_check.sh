#!/usr/bin/env bash
# The one script for a lent GPU machine (docs/DESIGN.md, "GPU validation").
#
# With that machine's own python3, torch and triton (no venv; nothing is downloaded) it
#   1. builds attngan with its C++ and CUDA extension (pip install --no-deps --no-build-isolation -e .,
#      with a compiler that links libstdc++ dynamically: see links_libstdcxx_dynamically) and
#      prints what was built,
#   2. runs the ladder of the GAN training step (bench/bench_train_step.py: the original's way,
#      then reference ops, fused ops, TF32, bf16, channels_last + cudnn.benchmark, fused Adam,
#      torch.compile, CUDA graphs, each row with the switches of the rows before it: ms per step,
#      images/s, launches and kernels per step, how busy the GPU is, peak memory) at the CUB
#      preset first (what the next GPU run must answer), with the profile of its fastest row
#      (the ops and kernels that take its time; its Chrome trace in the logs), then at the COCO
#      preset,
#   3. runs the GPU-marked tests (compiled Triton and the CUDA extension at the docs/DESIGN.md
#      sizes; the training step's switches: no host synchronisation, CUDA-graph replay against the
#      eager step; training under torchrun with NCCL, SyncBatchNorm on two GPUs),
#   4. runs the Triton test files compiled (their unmarked tests use the GPU when there is one;
#      among them every tiling of the DAMSM kernels, captions per program too, against one),
#   5. runs the DAMSM benchmark (--device cuda --dtype bf16 --record), compute-sanitizer's memcheck
#      on a tiny case of every CUDA kernel, the tile sweep of the Triton DAMSM kernels
#      (bench/tune_damsm_tiles.py), the DAMSM benchmark again with the tiles the sweep suggests
#      (the PyTorch providers and Triton, so the record compares them in one run), the
#      word-attention benchmark, racecheck on the same case, the ladder of the DAMSM
#      pretraining step at the CUB preset and, on two GPUs or more, the scaling of GAN training
#      over them (bench/bench_scaling.py), in that order (most needed first: the budget may cut
#      the last ones),
#   6. writes bench/results/<date>-<gpu>.md and .json and prints a short table last.
# Every step has a time limit and the whole run stays under BUDGET_S (default 480 s); a failing
# step is recorded and the next one still runs. Exit status: 0 only when every step that ran
# passed. The suggested tiles are left in the logs (tuned-tiles-bf16.json) for kernels.damsm.TILES.
#
# Usage, from anywhere:  bash bench/gpu_check.sh
#   PYTHON=...           interpreter to use (default python3); its scripts folder (ninja) goes
#                        first on PATH
#   BUDGET_S=...         seconds for the whole run
#   GPU_CHECK_STEPS=a,b  run only these steps after the build (names as in the printed table),
#                        e.g. to finish on a second machine what the budget cut on the first
#   ATTNGAN_COMMIT=...   the commit to record (here and by the benchmarks) when the tree is a copy
#                        whose .git is absent or stale, as the device tool's copy is
#   GPU_CHECK_OUT=dir    also copy the result file there, and a tarball of the logs and of every
#                        file this run wrote under bench/results/
# Adding an op: append its Triton test file to TRITON_TESTS, a step for its bench script (and its
# name to BENCH_STEPS, whose log tails print last) and, if it has a CUDA kernel, a few lines to
# SANITIZER_CASE.
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-480}
# torch's BuildExtension compiles in parallel only when it finds ninja, which pip installs into the
# interpreter's scripts folder; that folder is not always on PATH (a venv's python3 called by path).
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
unset TRITON_INTERPRET

# The extension must use the process's libstdc++ (the one torch uses). A compiler that links it
# in statically gives the extension its own iostreams and locale, and the first error message
# the extension formats crashes the process (seen on the GPU machine, 2026-11-27: its CXX,
# /opt/gcc/bin/g++, did that; every TORCH_CHECK that fired was a segfault). setup.py refuses such
# an extension; here, before the build, the compiler that CXX names (torch's default: c++) is
# probed, and the system g++ taken when it links statically.
links_libstdcxx_dynamically() {
  local dir rc
  dir=$(mktemp -d)
  echo 'int thrower() { throw 1; }' > "$dir/probe.cpp"
  "$1" -shared -fPIC "$dir/probe.cpp" -o "$dir/probe.so" > /dev/null 2>&1 &&
    readelf -d "$dir/probe.so" | grep -q 'NEEDED.*libstdc++'
  rc=$?
  rm -rf "$dir"
  return $rc
}
if ! links_libstdcxx_dynamically "${CXX:-c++}"; then
  for pair in /usr/bin/g++:/usr/bin/gcc /usr/bin/c++:/usr/bin/cc /usr/bin/clang++:/usr/bin/clang; do
    if [[ -x ${pair%%:*} ]] && links_libstdcxx_dynamically "${pair%%:*}"; then
      echo "=== ${CXX:-c++} links libstdc++ statically: building with CXX=${pair%%:*} CC=${pair#*:}"
      export CXX=${pair%%:*} CC=${pair#*:}
      break
    fi
  done
fi
START=$(date +%s)
STAMP=$(date -u +%Y%m%d-%H%M)
LOGS=$(mktemp -d /tmp/gpu_check.XXXXXX)
touch "$LOGS/.start"   # the results this run writes are the files newer than this one
# auto's measurements (attngan.autotune): made afresh by this run, kept with its logs
export ATTNGAN_TUNE_CACHE=$LOGS/autotune.json

TRITON_TESTS=(tests/test_damsm_kernels.py tests/test_word_attention_kernels.py tests/test_tune_damsm_tiles.py)
BENCH_STEPS=(ladder_cub ladder_coco bench_damsm tune_damsm_tiles bench_damsm_tuned
             bench_word_attention damsm_ladder bench_scaling)
SANITIZER_CASE='
import torch
import attngan._C  # registers torch.ops.attngan_C
ops = torch.ops.attngan_C
lengths = torch.tensor([7, 1, 4], device="cuda")
words, regions = torch.randn(3, 40, 7, device="cuda"), torch.randn(2, 40, 37, device="cuda")
for dtype in (torch.float32, torch.bfloat16):
    ops.damsm_word_similarity_fwd(words.to(dtype), lengths, regions.to(dtype), 4.0, 5.0)
    ops.damsm_word_similarity_bwd(torch.randn(2, 3, device="cuda"), words.to(dtype), lengths,
                                  regions.to(dtype), 4.0, 5.0, True)
query, projected = torch.randn(3, 40, 5, 7, device="cuda"), torch.randn(3, 40, 7, device="cuda")
for dtype in (torch.float32, torch.bfloat16):
    q, w = query.to(dtype), projected.to(dtype)
    context, attn = ops.word_attention_fwd(q, w, lengths, True, False)
    ops.word_attention_bwd(torch.randn_like(context), torch.randn_like(attn), q, w, lengths, False)
    ops.word_attention_bwd(torch.randn_like(context), None, q, w, lengths, False)
    joined, _ = ops.word_attention_fwd(q, w, lengths, False, True)
    ops.word_attention_bwd(torch.randn_like(joined), None, q, w, lengths, True)
torch.cuda.synchronize()
print("sanitizer case ran")
'

ENV_REPORT='
import sys, torch, triton
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__, "gpu", torch.cuda.get_device_name(0))
'
STEPS=()      # "name|status|seconds"
FAILED=0

remaining() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# step NAME WANTED_LIMIT_S CMD...: run CMD with a limit (cut to the budget left), log it, record it;
# skipped when GPU_CHECK_STEPS names steps and not this one (the build steps always run).
step() {
  local name=$1 want=$2; shift 2
  local left limit t0 rc status
  case $name in environment|build|built) ;; *)
    if [[ -n ${GPU_CHECK_STEPS:-} && ",$GPU_CHECK_STEPS," != *",$name,"* ]]; then
      return
    fi ;;
  esac
  left=$(( $(remaining) - 15 ))
  limit=$(( want < left ? want : left ))
  if (( limit < 20 )); then
    echo "=== $name: skipped, ${left}s of the budget left"
    STEPS+=("$name|skipped (budget)|0")
    return
  fi
  echo "=== $name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout (${limit}s)"; FAILED=1 ;;
    *) status="failed (exit $rc)"; FAILED=1 ;;
  esac
  tail -n 30 "$LOGS/$name.log"
  STEPS+=("$name|$status|$(( $(date +%s) - t0 ))")
}

step environment 30 bash -c "nvidia-smi -L; nvcc --version | tail -n 2; $PY -c '$ENV_REPORT'"
step build 240 "$PY" -m pip install --no-deps --no-build-isolation -e .
# fails unless the extension was built with its CUDA kernels (setup.py refuses one that carries
# its own libstdc++, and says why in the build log)
step built 30 "$PY" -c "import sys, attngan, attngan.backend as b; ext = b.compiled_extension(); \
print('attngan._C:', 'missing' if ext is None else ('with CUDA' if ext.with_cuda else 'CPU only')); \
print(b.describe()); sys.exit(0 if ext is not None and ext.with_cuda else 1)"
# Each row is profiled while it is built (a row run alone would compile again): the record
# ends with the fastest row's profile, and its Chrome trace is left in the logs.
LADDER=("$PY" bench/bench_train_step.py --device cuda --min-time 1 --profile 3 --record)
step ladder_cub 250 "${LADDER[@]}" --preset cub --trace "$LOGS/trace_cub"
step ladder_coco 150 "${LADDER[@]}" --preset coco
# with pytest-xdist, 4 worker processes: the tests are mostly Triton compilations (CPU-bound), and
# a worker that crashes is reported and replaced instead of ending the whole step
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
"$PY" -c "import xdist" 2> /dev/null && PYTEST+=(-n 4)
step pytest_gpu 150 "${PYTEST[@]}" -m gpu tests
existing_tests=()
for f in "${TRITON_TESTS[@]}"; do [[ -f $f ]] && existing_tests+=("$f"); done
if (( ${#existing_tests[@]} )); then
  step pytest_triton_compiled 120 "${PYTEST[@]}" -m "not gpu" "${existing_tests[@]}"
fi
SANITIZER=$(command -v compute-sanitizer)
step bench_damsm 180 "$PY" bench/bench_damsm.py --device cuda --dtype bf16 --record
if [[ -n $SANITIZER ]]; then
  step sanitizer_memcheck 60 "$SANITIZER" --tool memcheck --error-exitcode 3 "$PY" -c "$SANITIZER_CASE"
fi
step tune_damsm_tiles 90 "$PY" bench/tune_damsm_tiles.py --dtype bf16 --max-seconds 70 --record \
  --write-tiles "$LOGS/tuned-tiles-bf16.json"
if [[ -f $LOGS/tuned-tiles-bf16.json ]]; then
  step bench_damsm_tuned 120 "$PY" bench/bench_damsm.py --device cuda --dtype bf16 --record \
    --providers loop,reference,reference_compiled,triton --tiles "$LOGS/tuned-tiles-bf16.json"
fi
step bench_word_attention 180 "$PY" bench/bench_word_attention.py --device cuda --dtype bf16 --record
if [[ -n $SANITIZER ]]; then
  step sanitizer_racecheck 60 "$SANITIZER" --tool racecheck --error-exitcode 3 "$PY" -c "$SANITIZER_CASE"
else
  STEPS+=("sanitizer|skipped (no compute-sanitizer)|0")
fi
step damsm_ladder 140 "${LADDER[@]}" --stage damsm --preset cub
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if (( GPUS >= 2 )); then
  step bench_scaling 150 "$PY" bench/bench_scaling.py --device cuda --preset cub \
    --world-sizes "1,2$( (( GPUS >= 4 )) && echo ,4)" --steps 10 --record
else
  STEPS+=("bench_scaling|skipped (one GPU)|0")
fi

# Results: bench/results/<date>-<gpu>.md and .json (machine, versions, commit, steps, log tails).
RESULT=$("$PY" -c 'import sys; sys.path.insert(0, "bench"); from common import gpu_check_record
logs, stamp, start, *steps = sys.argv[1:]
print(gpu_check_record(steps, logs, stamp, int(start)))' "$LOGS" "$STAMP" "$START" "${STEPS[@]}")
if [[ -n ${GPU_CHECK_OUT:-} ]]; then
  mkdir -p "$GPU_CHECK_OUT"
  cp "$RESULT.md" "$GPU_CHECK_OUT"/ 2> /dev/null
  mkdir -p "$LOGS/results"
  find bench/results -type f -newer "$LOGS/.start" -exec cp {} "$LOGS/results/" \;
  tar -czf "$GPU_CHECK_OUT/gpu_check.tar.gz" -C "$LOGS" --exclude=.start .
fi

echo
echo "=== results: $RESULT.md / .json (logs in $LOGS)"
for name in "${BENCH_STEPS[@]}"; do
  # the timing table (a training step's profiles follow it in the log and the record)
  [[ -f $LOGS/$name.log ]] && { echo "--- $name"; sed '/^## Where the time goes/,$d' \
    "$LOGS/$name.log" | tail -n 15; }
done
printf '%-26s %-28s %s\n' step status seconds
for s in "${STEPS[@]}"; do
  IFS='|' read -r name status secs <<< "$s"
  printf '%-26s %-28s %s\n' "$name" "$status" "$secs"
done
exit $FAILED
