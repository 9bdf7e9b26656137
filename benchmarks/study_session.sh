#!/usr/bin/env bash
# One device call of the memory-quality study (issue 10, STUDY.md): a Ray head over the node's GPUs, every
# sweep given as SPEC=DB run against it with --resume and --stop-after (a driver each, as on a cluster), then a
# consistent copy of each database (SQLite's backup API, WAL included) and the logs in $OUT.
# Prepare here:   ../shared/tools/gpu-wheelhouse .gpu-wheels        (writes .gpu-wheels.tar.xz)
#                 mkdir -p .gpu-data/<name> && cp ../shared/data/<name>/interactions.csv.gz .gpu-data/<name>/
# Through the device tool, carrying .gpu-wheels.tar.xz and .gpu-data:
#   STOP_AFTER=170 bash benchmarks/study_session.sh sweeps/study-ml1m.toml=results/study/study-ml1m.sqlite ...
# Then copy $OUT/*.sqlite over results/study/ and commit them (the next call resumes from them).
# Environment: STOP_AFTER (s, default 170): no trial starts later; DRIVER_TIMEOUT (s, default 540): a driver
# still running then is killed (its finished trials are in the database already); RAY_GPUS (default: all).
set -uo pipefail
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out" /tmp/wh
started=$(date +%s)
tar xJf .gpu-wheels.tar.xz -C /tmp/wh \
  && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/wh/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export CCE_STUDY_DATA_PATH=$PWD/.gpu-data RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
logs=$(mktemp -d)
{
  echo "tree ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; started $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, triton, ray; print("torch", torch.__version__, "triton", triton.__version__,
    "cuda", torch.version.cuda, "ray", ray.__version__)'
  echo "cpus $(nproc)"
} 2>&1 | tee "$logs/environment.txt"

gpus=${RAY_GPUS:-$(nvidia-smi --list-gpus | wc -l)}
ray start --head --port 6379 --num-gpus "$gpus" --num-cpus "$(nproc)" --include-dashboard=false \
  --disable-usage-stats > "$logs/ray-start.log" 2>&1 || { cat "$logs/ray-start.log"; exit 1; }
echo "ray head up after $(( $(date +%s) - started )) s with $gpus GPU(s)"

for pair in "$@"; do
  spec=${pair%%=*} db=${pair#*=}
  name=$(basename "$spec" .toml)
  timeout "${DRIVER_TIMEOUT:-540}" python3 -m study.cli sweep "$spec" --db "$db" --resume \
    --address 127.0.0.1:6379 --stop-after "${STOP_AFTER:-170}" > "$logs/$name.log" 2>&1 &
done
wait
ray stop --force > /dev/null 2>&1
echo "drivers done after $(( $(date +%s) - started )) s"

for pair in "$@"; do
  db=${pair#*=}
  [ -f "$db" ] || continue
  python3 - "$db" "$out/$(basename "$db")" <<'PY'
import sqlite3, sys
source, target = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])
source.backup(target)
target.execute("PRAGMA journal_mode=DELETE")
counts = source.execute("select status, count(*) from trials group by status").fetchall()
print(sys.argv[1], dict(counts))
PY
done
for log in "$logs"/*.log; do echo "== $log"; tail -4 "$log"; done
tar czf "$out/logs.tgz" -C "$logs" .
