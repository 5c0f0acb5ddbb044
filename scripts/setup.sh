#!/usr/bin/env bash
# Installs everything gradscope needs on a fresh machine: Python packages and a headless Chromium
# (PNG export through kaleido and the dashboard's browser tests need one).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "gradscope set up: $(python3 -c 'import gradscope, torch; print(gradscope.__version__, "torch", torch.__version__)')"
