#!/usr/bin/env bash
# Install tinytamer and everything it needs into .venv (idempotent; safe to re-run).
#  - system packages for the bare-metal path (ARM cross-compiler, newlib, QEMU) from Debian,
#    when running as root with apt-get available;
#  - torch==2.13.0 FIRST (a CPU build), so nothing else can pull a different torch;
#  - tinytamer itself (editable) with its test and optional backend extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/install-micro-toolchain.sh ] || [ -f scripts/install-micro-toolchain.sh ]; then
  bash scripts/install-micro-toolchain.sh || echo "warning: ARM toolchain not installed; micro targets will be unavailable" >&2
fi

# espeak-ng synthesizes the `keywords` speech dataset (keyword spotting, `tamer demo --audio`).
if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng; } \
    || echo "warning: espeak-ng not installed; the keywords dataset will be unavailable" >&2
fi

# Debian's Chromium for the report's browser test (Playwright drives it; no browser download).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
    || echo "warning: chromium not installed; the report's browser test will skip" >&2
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,backends]"
python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch was changed to {torch.__version__}"
PY
