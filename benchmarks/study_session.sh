#!/usr/bin/env bash
# One device call of the memory-quality study (issue 10, STUDY.md): a Ray head over the node's GPUs, every
# sweep given as SPEC=DB run against it with --resume and --stop-after (a driver each, as on a cluster), then a
# consistent copy of each database (`benchmarks/study_collect.py snapshot`: SQLite's backup API, WAL included)
# and the logs in $OUT. SPEC=DB@CARDS (e.g. @0,1) gives a sweep its own cards: sweeps with the same CARDS share
# one Ray head; without @, all cards.
# Prepare here:   ../shared/tools/gpu-wheelhouse .gpu-wheels        (writes .gpu-wheels.tar.xz)
#                 mkdir -p .gpu-data/<name> && cp ../shared/data/<name>/interactions.csv.gz .gpu-data/<name>/
# Through the device tool, carrying .gpu-wheels.tar.xz and .gpu-data:
#   COMMIT=<sha> STOP_AFTER=170 bash benchmarks/study_session.sh sweeps/study-ml1m.toml=results/study/study-ml1m.sqlite ...
# Then bring the call's files into the tree and commit them (the next call resumes from them):
#   python benchmarks/study_collect.py FILES_AT --call N   (refuses a database the call got from an older copy)
# Environment: COMMIT (the tree's commit, written to environment.txt); STOP_AFTER (s, default 170): no trial
# starts later; DRIVER_TIMEOUT (s, default 540): a driver still running then is killed (its finished trials are
# in the database already); SWEEP_ARGS: more arguments for every driver's `cce-study sweep`, e.g.
# SWEEP_ARGS="--retry predicted_over_budget" (re-plan the rows an older memory model skipped),
# "--new-spec-version" (a spec extended since its database recorded it) or "--gpus-per-trial 0.25
# --cpus-per-trial 4" (this call packs four trials to a card, whatever the spec says).
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
  # the device copy's .git can lag the tree it was sent with (calls 25-34), so only a given COMMIT names it
  echo "tree ${COMMIT:-unknown (pass COMMIT=\$(git rev-parse --short HEAD))}; started $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, triton, ray; print("torch", torch.__version__, "triton", triton.__version__,
    "cuda", torch.version.cuda, "ray", ray.__version__)'
  echo "cpus $(nproc)"
} 2>&1 | tee "$logs/environment.txt"

# One Ray head per distinct card set: drivers that share a head compete for its cards, and the small card
# shares of one sweep can keep every card too fragmented for the larger shares another sweep asks for.
declare -A port_of
next_port=6379 offset=0
for pair in "$@"; do
  cards=${pair##*@}; [ "$cards" = "$pair" ] && cards=all
  [ -n "${port_of[$cards]:-}" ] && continue
  port_of[$cards]=$next_port
  if [ "$cards" = all ]; then visible=$(seq -s, 0 $(( $(nvidia-smi --list-gpus | wc -l) - 1 ))); else visible=$cards; fi
  count=$(tr ',' '\n' <<< "$visible" | wc -l)
  CUDA_VISIBLE_DEVICES=$visible ray start --head --port "$next_port" --num-gpus "$count" \
    --num-cpus $(( $(nproc) * count / $(nvidia-smi --list-gpus | wc -l) )) --include-dashboard=false \
    --disable-usage-stats --dashboard-agent-listen-port $(( 52365 + offset )) \
    --dashboard-agent-grpc-port $(( 53365 + offset )) --metrics-export-port $(( 54365 + offset )) \
    > "$logs/ray-start-$next_port.log" 2>&1 || { cat "$logs/ray-start-$next_port.log"; exit 1; }
  echo "ray head :$next_port on cards $visible after $(( $(date +%s) - started )) s"
  next_port=$(( next_port + 1 )) offset=$(( offset + 1 ))
done

for pair in "$@"; do
  cards=${pair##*@}; [ "$cards" = "$pair" ] && cards=all
  target=${pair%@*} spec=${target%%=*} db=${target#*=}
  name=$(basename "$spec" .toml)
  timeout "${DRIVER_TIMEOUT:-540}" python3 -m study.cli sweep "$spec" --db "$db" --resume \
    --address "127.0.0.1:${port_of[$cards]}" --stop-after "${STOP_AFTER:-170}" ${SWEEP_ARGS:-} > "$logs/$name.log" 2>&1 &
done
wait
ray stop --force > /dev/null 2>&1
echo "drivers done after $(( $(date +%s) - started )) s"

databases=()
for pair in "$@"; do target=${pair%@*}; databases+=("${target#*=}"); done
python3 benchmarks/study_collect.py snapshot "$out" "${databases[@]}"
for log in "$logs"/*.log; do echo "== $log"; tail -4 "$log"; done
tar czf "$out/logs.tgz" -C "$logs" .
