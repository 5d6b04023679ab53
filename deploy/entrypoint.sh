#!/usr/bin/env bash
# Container entrypoint (the seed's GPU-check entrypoint): `tradingd doctor` first, so every container log starts
# with what the daemon will run on (GPU, CUDA, TensorRT, XGBoost/ORT builds, chosen backends), then exec the
# command so it is PID 1 and gets SIGTERM (the daemon drains on it). A first word that is not a program is a
# tradingd command: `podman run IMAGE train ...` runs `tradingd train ...`.
#   TRADINGD_REQUIRE_GPU=1  refuse to start (exit 3) without a CUDA GPU; default 1 in the GPU image (EXTRA=gpu)
#   TRADINGD_DOCTOR=0       skip the report (e.g. one-off commands)
# A doctor exit of 1 (conflicting packages, e.g. onnxruntime and onnxruntime-gpu both installed) stops the start.
set -euo pipefail
[ $# -gt 0 ] || set -- tradingd run --config /etc/tradingd/config.toml
command -v -- "$1" >/dev/null 2>&1 || set -- tradingd "$@"

if [ "${TRADINGD_DOCTOR:-1}" != 0 ] && ! { [ "$1" = tradingd ] && [ "${2:-}" = doctor ]; }; then
  echo "tradingd-entrypoint: tradingd doctor" >&2
  rc=0
  tradingd doctor || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "tradingd-entrypoint: tradingd doctor failed (exit $rc): fix the install before starting" >&2
    exit "$rc"
  fi
fi

default_gpu=0
[ "${TRADINGD_EXTRA:-cpu}" = gpu ] && default_gpu=1
if [ "${TRADINGD_REQUIRE_GPU:-$default_gpu}" = 1 ]; then
  if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "tradingd-entrypoint: no CUDA GPU visible to torch (start with --gpus all / --device nvidia.com/gpu=all," \
         "or TRADINGD_REQUIRE_GPU=0 to run on the CPU)" >&2
    exit 3
  fi
fi
echo "tradingd-entrypoint: exec $*" >&2
exec "$@"
