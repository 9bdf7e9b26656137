#!/usr/bin/env bash
# The GPU checks that issues 3 and 4 still need, sized for two device calls on one H100/H200.
# Prepare here (once):   ../shared/tools/gpu-wheelhouse .gpu-wheels   (+ the cut-cross-entropy wheel:
#                        pip download --no-deps -d .gpu-wheels cut-cross-entropy)
#                        mkdir -p .gpu-data/ml-1m && cp ../shared/data/ml-1m/interactions.csv.gz .gpu-data/ml-1m/
# Then, through the device tool, carrying .gpu-wheels and .gpu-data:
#   COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh bench        (~5 min: issue 3)
#   COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh training     (~5 min: issues 3, 4, 5)
#   COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh checkpoint   (~3 min: issue 15)
#   COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh memory       (~7 min on one card: issue 11)
#   COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh cuda         (the `pytest -m cuda` tests)
#   COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh memory2      (< 6 min on two cards: issue 11's
#                                          out-of-sample set, results/memory-catalogue/predictions-*.csv)
#   COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh memory3      (< 6 min on one card: issue 11's
#                                          third set, out of the sample of the model fixed after memory2)
#   COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh memory4      (< 6 min on one card, ALONE on it:
#                                          issue 11's fourth set, the first with the trainer's cuBLAS warm-up)
# Issue 13 (three calls): speed (~4 min), loss (< 8 min), eval (< 10 min); then prepared (< 10 min: the
#   third session's evaluation and d-blocked backward on the GPU; needs diginetica and ml-1m in .gpu-data). loss also needs
#   .cache/published-cce (the published CCE- kernel: .cache/published-cce/SOURCE.md says how to lay it out)
# and eval needs .cache/eval-before (the tree before the evaluation change) and gowalla in .gpu-data:
#   mkdir -p .cache/eval-before && git archive beb4e36 kernels models study | tar -x -C .cache/eval-before
#   mkdir -p .gpu-data/gowalla && cp ../shared/data/gowalla/interactions.csv.gz .gpu-data/gowalla/
# Everything lands in $OUT/<part>.tgz (the device tool returns at most 8 files); unpack it under
# results/<card>-<date>/ and update BENCHMARKS.md from it.
set -uo pipefail
part=${1:?usage: gpu_session.sh dev|bench|training|final|speed|loss|eval|checkpoint|memory|memory2|memory3|memory4|cuda|prepared|chunks|synthetic|shared-ab}
out=${OUT:-$PWD/gpu-out}
work=$(mktemp -d)
# The carried wheels, if any (speed and eval need none; loss needs the cut-cross-entropy wheel).
if compgen -G ".gpu-wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu-wheels/*.whl \
    || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export CCE_STUDY_DATA_PATH=$PWD/.gpu-data RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
{
  echo "commit ${COMMIT:-unknown}; started $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)'
} | tee "$work/environment.txt"

case "$part" in
  dev)
    # Kernel variants side by side (choose defaults), then the fused and PyTorch losses trained side by side.
    timeout 220 python3 benchmarks/dev_gather.py --out "$work" 2>&1 | tee "$work/dev_gather.log"
    timeout 100 python3 benchmarks/dev_shared.py --sections check_fused,fused --out "$work" 2>&1 \
      | tee "$work/dev_shared.log"
    timeout 150 python3 -m study.sweep sweeps/gpu-smoke.toml --db "$work/gpu-smoke.sqlite" 2>&1 \
      | tee "$work/gpu-smoke.log"
    ;;
  bench)
    bench() { python3 -m study.benchmarks.loss "$@" 2>&1 | tee -a "$work/bench.log"; }
    bench --scheme shared,sequence --negatives 4096,16384 --hidden-dim 64 --out "$work/dense-d64.json"
    bench --scheme shared,sequence --negatives 4096,16384 --hidden-dim 256 --out "$work/dense-d256.json"
    bench --scheme position,drawn --negatives 2047 --hidden-dim 64 --out "$work/position-d64.json"
    bench --scheme position,drawn --negatives 511 --hidden-dim 256 --rows 65536 --out "$work/position-d256.json"
    bench --scheme full --catalogue 1000000 --hidden-dim 64 --impls triton,cce --out "$work/full-d64.json"
    bench --scheme full --catalogue 1000000 --hidden-dim 256 --impls triton,cce --out "$work/full-d256.json"
    ;;
  training)
    # The fused and PyTorch losses trained side by side (issue 3), budgets enforced (issue 5).
    # Each step under `timeout` so that the archive below is always written within one device call;
    # memory_validation rewrites its CSV after every configuration, so a cut-off run keeps what finished.
    timeout 180 python3 -m study.sweep sweeps/gpu-smoke.toml --db "$work/gpu-smoke.sqlite" 2>&1 \
      | tee "$work/gpu-smoke.log"
    # Every configuration of the memory-model validation, three processes at a time (issue 4).
    timeout "${MEMORY_SECONDS:-330}" python3 benchmarks/memory_validation.py --out "$work/memory-validation" \
      --jobs 3 --timeout 300 2>&1 \
      | tee "$work/memory-validation.log"
    ;;
  final)
    # Issue 4's validation, then issue 3's benchmark, in one call under one deadline (FINAL_SECONDS
    # after the start) so the archive below is always written: all 33 memory configurations, five
    # processes at a time, then the loss at the design sizes, most needed first (per-position cases
    # without torch.compile, which no target needs). A step cut off by the deadline keeps what it wrote.
    deadline=$(( $(date +%s) + ${FINAL_SECONDS:-555} ))
    left() { local n=$(( deadline - $(date +%s) )); echo $(( n < $1 ? (n > 1 ? n : 1) : $1 )); }
    timeout "$(left 300)" python3 benchmarks/memory_validation.py --out "$work/memory-validation" \
      --jobs 5 --timeout 240 2>&1 | tee "$work/memory-validation.log"
    bench() {
      timeout "$(left 150)" python3 -m study.benchmarks.loss --warmup-ms 50 --rep-ms 300 "$@" 2>&1 \
        | tee -a "$work/bench.log"
    }
    bench --scheme position,drawn --negatives 2047 --hidden-dim 64 --impls triton,torch \
      --out "$work/position-d64.json"
    bench --scheme shared,sequence --negatives 4096,16384 --hidden-dim 64 --out "$work/dense-d64.json"
    bench --scheme position,drawn --negatives 511 --hidden-dim 256 --rows 65536 --impls triton,torch \
      --out "$work/position-d256.json"
    bench --scheme shared,sequence --negatives 4096,16384 --hidden-dim 256 --out "$work/dense-d256.json"
    bench --scheme full --catalogue 1000000 --hidden-dim 64 --impls triton,cce --out "$work/full-d64.json"
    bench --scheme full --catalogue 1000000 --hidden-dim 256 --impls triton,cce --out "$work/full-d256.json"
    ;;
  speed)
    # Issue 13: the kernel variants against the defaults (one call, ~4 min).
    timeout 290 python3 benchmarks/dev_speed.py --out "$work" 2>&1 | tee "$work/dev_speed.log"
    ;;
  loss)
    # Issue 13: every case of docs/design.md#numbers-to-beat, public call and bare kernel next to eager,
    # compile, the published CCE- kernel (carried in .cache/published-cce) and cut-cross-entropy (its
    # wheel in .gpu-wheels), plus the setup section on the shared K=4096 d=64 case (one call, under 8 min).
    timeout 470 python3 -m study.benchmarks.loss --preset design --sections setup,loss --warmup-ms 50 --rep-ms 300 \
      --deadline-seconds 420 --published-cce .cache/published-cce --out "$work" 2>&1 | tee "$work/bench.log"
    ;;
  eval)
    # Issue 13: training vs evaluation seconds per epoch, ml-1m and gowalla, before (the tree in
    # .cache/eval-before) and after; then evaluation alone with the metrics compared exactly.
    timeout 560 python3 benchmarks/eval_split.py --trees before=.cache/eval-before,after=. \
      --datasets ml-1m,gowalla --mode epoch,eval --epochs 2 --repeats 2 --device cuda --timeout 240 \
      --out "$work" 2>&1 | tee "$work/eval_split.log"
    ;;
  checkpoint)
    # One study-sized trial (ml-1m, per-position K=1024, batch 256, L=200, fused loss) killed after
    # epoch 20 of 40 and resumed by Tune from its checkpoint, then the same trial uninterrupted;
    # plus the save/load time of a 1M-item model's checkpoint (issue 15).
    timeout 500 python3 benchmarks/checkpoint_resume.py --out "$work/checkpoint" --large-items 1000000 \
      2>&1 | tee "$work/checkpoint.log"
    rm -rf "$work/checkpoint/storage"  # the kept models (a few MiB each): not needed in the archive
    ;;
  memory)
    # Issue 11: the catalogue-scale memory validation (41 configurations at 10^5-10^7 items, predicted
    # before measuring in results/memory-catalogue/), every visible card, one process per configuration.
    cards=$(python3 -c 'import torch; print(",".join(map(str, range(torch.cuda.device_count()))))')
    timeout 540 python3 benchmarks/memory_validation.py --set catalogue --gpus "$cards" \
      --deadline "${MEMORY_DEADLINE:-480}" --out "$work/memory-catalogue" 2>&1 | tee "$work/memory-catalogue.log"
    ;;
  cuda)
    # The suite's own GPU tests (`pytest -m cuda`: tests/test_cuda_kernels.py, every kernel path compiled for
    # this card against the float64 loss). pytest is pure Python: carry its wheels if the host lacks it
    # (pip download --no-deps -d .gpu-wheels pytest pluggy iniconfig).
    if ! python3 -c 'import pytest' 2>/dev/null; then
      echo "pytest is not installed on this host: carry its wheels in .gpu-wheels" >&2
      exit 2
    fi
    # With pytest-xdist carried too (CUDA_WORKERS=8), the compilations of the variants run in parallel.
    workers=(); python3 -c 'import xdist' 2>/dev/null && workers=(-n "${CUDA_WORKERS:-0}")
    timeout "${CUDA_SECONDS:-540}" python3 -m pytest -m cuda -v -rfEs --tb=short --durations=20 -p no:cacheprovider \
      "${workers[@]}" tests/test_cuda_kernels.py \
      --junitxml "$work/cuda-tests.xml" 2>&1 | tee "$work/cuda-tests.log"
    ;;
  memory2)
    # Issue 11's out-of-sample set (36 configurations on new logs), every visible card; cut off at 330 s.
    cards=$(python3 -c 'import torch; print(",".join(map(str, range(torch.cuda.device_count()))))')
    # MEMORY_ONLY=name,name: only those configurations (a rerun of rows that failed).
    timeout 400 python3 benchmarks/memory_validation.py --set catalogue2 --gpus "$cards" --timeout 240 \
      ${MEMORY_ONLY:+--only "$MEMORY_ONLY"} \
      --deadline "${MEMORY_DEADLINE:-330}" --out "$work/memory-catalogue2" 2>&1 | tee "$work/memory-catalogue2.log"
    ;;
  memory3)
    # Issue 11's third set (34 configurations on new logs, out of the sample of the model fixed after
    # memory2), every visible card (one is enough: four trials at a time); cut off at 330 s.
    cards=$(python3 -c 'import torch; print(",".join(map(str, range(torch.cuda.device_count()))))')
    # MEMORY_ONLY=name,name: only those configurations (a rerun of rows that failed).
    timeout 400 python3 benchmarks/memory_validation.py --set catalogue3 --gpus "$cards" --timeout 240 \
      ${MEMORY_ONLY:+--only "$MEMORY_ONLY"} \
      --deadline "${MEMORY_DEADLINE:-330}" --out "$work/memory-catalogue3" 2>&1 | tee "$work/memory-catalogue3.log"
    ;;
  memory4)
    # Issue 11's fourth set (37 configurations on new logs), the first run by the trainer that makes its cuBLAS
    # workspaces before anything else of a trial (study/memory/blas_workspaces.py), predicted by the model that
    # then charges no pinned transient (results/memory-catalogue/predictions-*.csv). One card, four trials at
    # a time; cut off at 330 s. The card must be this part's alone: memory3 lost 8 rows to a card it shared
    # with `pytest -m cuda` (their allocators retried), so memory_validation refuses a card another process
    # uses (--require-idle); run no other part beside it.
    cards=$(python3 -c 'import torch; print(",".join(map(str, range(torch.cuda.device_count()))))')
    # First the warm-up's own GPU test (each thread's workspace alone in its segment), when pytest is here;
    # it ends before the trials start.
    if python3 -c 'import pytest' 2>/dev/null; then
      timeout 120 python3 -m pytest -m cuda -q -p no:cacheprovider tests/test_blas_workspaces.py 2>&1 \
        | tee "$work/blas-workspaces-test.log"
    else
      echo "pytest is not installed: tests/test_blas_workspaces.py's GPU test skipped" \
        | tee "$work/blas-workspaces-test.log"
    fi
    # MEMORY_ONLY=name,name: only those configurations (a rerun of rows that failed).
    timeout 400 python3 benchmarks/memory_validation.py --set catalogue4 --gpus "$cards" --timeout 240 \
      --require-idle ${MEMORY_ONLY:+--only "$MEMORY_ONLY"} \
      --deadline "${MEMORY_DEADLINE:-330}" --out "$work/memory-catalogue4" 2>&1 | tee "$work/memory-catalogue4.log"
    ;;
  prepared)
    # Issue 13, what the 2026-11-29 third session prepared untimed, in one call under one deadline
    # (PREPARED_SECONDS after the start, default 560): first its exactness on this card (the exact top-k
    # evaluation against the key-based reference, with the tie kernel compiled; the d-blocked shared kernels
    # against float64), then the ranking old vs new on diginetica (L=20, evaluation batch 2048, as the study
    # runs it) and ml-1m (L=200), then the d-blocked kernels timed against the defaults and torch.compile
    # with what is left. Carry .gpu-extra (pytest-xdist) to compile the kernel tests in parallel.
    deadline=$(( $(date +%s) + ${PREPARED_SECONDS:-560} ))
    left() { local n=$(( deadline - $(date +%s) )); echo $(( n < $1 ? (n > 1 ? n : 1) : $1 )); }
    if compgen -G ".gpu-extra/*.whl" > /dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-extra/*.whl || exit 1
    fi
    workers=(); python3 -c 'import xdist' 2>/dev/null && workers=(-n 8)
    timeout "$(left 90)" python3 -m pytest -m cuda -v -rfEs --tb=short -p no:cacheprovider \
      tests/test_metrics_reference.py 2>&1 | tee "$work/metrics-cuda.log"
    timeout "$(left 100)" python3 benchmarks/eval_split.py --mode ranking --datasets diginetica --max-len 20 \
      --eval-batch-size 2048 --device cuda --out "$work/ranking-diginetica" 2>&1 | tee "$work/ranking-diginetica.log"
    timeout "$(left 60)" python3 benchmarks/eval_split.py --mode ranking --datasets ml-1m --max-len 200 \
      --device cuda --out "$work/ranking-ml-1m" 2>&1 | tee "$work/ranking-ml-1m.log"
    timeout "$(left 150)" python3 -m pytest -m cuda -v -rfEs --tb=short -p no:cacheprovider "${workers[@]}" \
      tests/test_cuda_kernels.py -k d_blocked 2>&1 | tee "$work/d-blocked-cuda.log"
    budget=$(left 400); timeout "$budget" python3 benchmarks/dev_speed.py --sections dblock \
      --budget-seconds $(( budget > 40 ? budget - 25 : 15 )) --out "$work/dblock" 2>&1 | tee "$work/dblock.log"
    ;;
  chunks)
    # Issue 13 item 5 at catalogue scale: the evaluator as trials run it, at several max_scores (scores alive
    # at once), on the 10^6-item synthetic log of sweeps/study-synthetic-1m.toml and on diginetica (< 5 min).
    timeout 170 python3 benchmarks/eval_split.py --mode chunks --max-len 50 --eval-batch-size 256 --repeats 2 \
      --datasets "synthetic:users=20000,items=1000000,mean_len=50,alpha=1.0,seed=0,catalogue=full" \
      --max-scores $(( 1 << 24 )),$(( 1 << 26 )),$(( 1 << 28 )) --device cuda --out "$work/chunks-synthetic-1m" \
      2>&1 | tee "$work/chunks-synthetic-1m.log"
    timeout 120 python3 benchmarks/eval_split.py --mode chunks --max-len 20 --eval-batch-size 2048 --repeats 2 \
      --datasets diginetica --max-scores $(( 1 << 24 )),$(( 1 << 26 )),$(( 1 << 27 )) --device cuda \
      --out "$work/chunks-diginetica" 2>&1 | tee "$work/chunks-diginetica.log"
    ;;
  synthetic)
    # Issue 10's catalogue-scale dataset before its sweep: one fused and one PyTorch trial of
    # sweeps/study-synthetic-1m.toml's settings (10^6 items, catalogue=full, evaluation in chunks of 2^26
    # scores), four epochs each, alone on the card: the memory model's prediction against the measured peak,
    # and the epoch / validation seconds (< 5 min).
    data="synthetic:users=20000,items=1000000,mean_len=50,alpha=1.0,seed=0,catalogue=full"
    common=(--dataset "$data" --loss ce-neg --negative-scope position --sampling uniform --hidden 64 --blocks 2
            --heads 1 --dropout 0.1 --lr 0.001 --epochs 4 --eval-every 2 --eval-batch-size 256
            --eval-max-scores 67108864 --memory-budget 40GiB --device cuda --no-progress --json)
    timeout 130 python3 -m study.cli train "${common[@]}" --impl triton --negatives 4096 --batch-size 1024 \
      --max-len 200 > "$work/fused-k4096-b1024-l200.json" 2> "$work/fused-k4096-b1024-l200.log"
    timeout 130 python3 -m study.cli train "${common[@]}" --impl torch --negatives 1024 --batch-size 1024 \
      --max-len 50 > "$work/torch-k1024-b1024-l50.json" 2> "$work/torch-k1024-b1024-l50.log"
    python3 - "$work" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        r = json.loads(path.read_text())
    except ValueError:
        print(path.name, "no record"); continue
    m = r.get("memory") or {}
    print(path.name, r.get("status"), "num_items", r.get("num_items"), "predicted", r.get("predicted_peak_bytes"),
          "peak", m.get("peak_bytes"), "allocated", m.get("torch_max_allocated"), "epochs", [(e.get("epoch"), round(e.get("epoch_seconds") or 0, 2),
          round(e.get("eval_seconds") or 0, 2)) for e in r.get("epochs", [])], "error", r.get("error"))
PY
    ;;
  shared-ab)
    # The dense loss at d=64 and 256 of the trees in .cache/ab/* (git archive SHA kernels) next to this one.
    trees=after=.; for tree in .cache/ab/*/; do trees="$(basename "$tree")=$tree,$trees"; done
    timeout "${AB_SECONDS:-300}" python3 benchmarks/shared_ab.py --trees "$trees" --out "$work/shared-ab" 2>&1 \
      | tee "$work/shared-ab.log"
    ;;
  *) echo "unknown part: $part (dev, bench, training, final, speed, loss, eval, checkpoint, memory, memory2, memory3, memory4, cuda, prepared, chunks, synthetic or shared-ab)" >&2
     exit 2 ;;
esac
mkdir -p "$out"
tar czf "$out/$part.tgz" -C "$work" .
echo "wrote $out/$part.tgz"
