#!/usr/bin/env bash
# Create .venv and install contrastlab with its test tools. The torch/torchvision pins are the
# builds this project is tested with (pyproject declares ranges for users' own installs).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "contrastlab setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then say "creating .venv"; fi
python3 -m venv .venv
say "installing torch 2.14.1 and torchvision 0.29.1 (quick when present; minutes the first time)"
.venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 \
  | grep -v "is ignored" || true
say "installing contrastlab and its dependencies (Lightning, kornia, timm, ...)"
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import contrastlab, torch, lightning, kornia; print('contrastlab', contrastlab.__version__, 'torch', torch.__version__)"
