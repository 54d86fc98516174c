#!/usr/bin/env bash
# Install the toolchains the bare-metal `micro` target needs, from Debian:
#   gcc-arm-none-eabi + libnewlib-arm-none-eabi  cross-compile for Cortex-M
#   qemu-system-arm                              run whole programs (mps2-an386 / mps2-an500)
# Idempotent: does nothing when every tool is already installed.
set -euo pipefail

packages=(gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "micro toolchain already installed: ${packages[*]}"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "installing: ${missing[*]}"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
arm-none-eabi-gcc --version | head -n 1
qemu-system-arm --version | head -n 1
