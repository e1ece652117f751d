#!/usr/bin/env bash
# Set up napari-samlung on a fresh Debian/Ubuntu machine: system libraries for napari (Xvfb, Mesa,
# the xcb libraries Qt needs), a virtual environment in .venv, torch 2.13.0 first (a looser torch
# requirement can pull a multi-GB CUDA build), then the package with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(xvfb xauth libgl1 libgl1-mesa-dri libegl1 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
      libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
      libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1)
missing=()
for d in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: ready (.venv/bin/samlung, .venv/bin/samlung-finetune)"
