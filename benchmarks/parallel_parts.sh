#!/usr/bin/env bash
# Several parts of benchmarks/gpu_session.sh at once on one multi-GPU machine, each on its own cards, so one
# device call serves several measurements: CARDS=PART[+PART...] runs the parts one after the other with
# CUDA_VISIBLE_DEVICES=CARDS (e.g. 0=loss 1=speed+checkpoint 2=eval 3=memory). The wheels (.gpu-wheels.tar.xz,
# plus any in .gpu-extra/) are installed once, first; each part writes $OUT/<part>.tgz as usual.
#   bash benchmarks/parallel_parts.sh 0=loss 1=speed+checkpoint 2=eval 3=memory
set -uo pipefail
mkdir -p /tmp/wh
[ -f .gpu-wheels.tar.xz ] && tar xJf .gpu-wheels.tar.xz -C /tmp/wh
compgen -G ".gpu-extra/*.whl" > /dev/null && cp .gpu-extra/*.whl /tmp/wh/
if compgen -G "/tmp/wh/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/wh/*.whl || exit 1
fi
export PATH=/tmp/site/bin:$PATH
started=$(date +%s)
for assignment in "$@"; do
  cards=${assignment%%=*} parts=${assignment#*=}
  (
    for part in ${parts//+/ }; do
      echo "[cards $cards] $part starts at $(( $(date +%s) - started )) s"
      CUDA_VISIBLE_DEVICES=$cards bash benchmarks/gpu_session.sh "$part" > "/tmp/part-$part.log" 2>&1
      echo "[cards $cards] $part ended (rc $?) at $(( $(date +%s) - started )) s"
    done
  ) &
done
wait
for log in /tmp/part-*.log; do echo "== $log"; tail -n 6 "$log"; done
