#!/usr/bin/env bash
# dist/: the project's wheel plus a wheel of each runtime dependency, so that the wheel
# installs with `pip install --no-index --find-links dist xcloud-registry` (the wheel test,
# the Docker image) without an index at install time.
#
#   scripts/dist.sh [OUT_DIR]      default: dist/
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-"$ROOT/.venv/bin/python"}
OUT=${1:-"$ROOT/dist"}
PIP=("$PY" -m pip --disable-pip-version-check -q)

mkdir -p "$OUT"
rm -f "$OUT"/xcloud_registry-*.whl # never a stale build of ours
# hatchling comes with the [test] extra: no isolated build environment to download.
"${PIP[@]}" wheel --no-build-isolation --no-deps -w "$OUT" "$ROOT"
wheel=$(ls "$OUT"/xcloud_registry-*.whl)
"${PIP[@]}" wheel -w "$OUT" --find-links "$OUT" "$wheel"
echo "$wheel"
