#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: system packages (where missing), .venv, pinned deps.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v java >/dev/null || need+=(default-jre-headless)  # METEOR (pycocoevalcap) needs a JRE
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps openai-whisper==20250625
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "set-up done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
