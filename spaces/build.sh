#!/usr/bin/env bash
# Assemble a Hugging Face Space from this repo: bash spaces/build.sh OUT_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${1:?usage: spaces/build.sh OUT_DIR}"
mkdir -p "$out"
cp "$here/README.md" "$here/app.py" "$here/requirements.txt" "$out/"
for part in mmchat knowledge adapters; do
  rm -rf "${out:?}/$part"
  cp -r "$root/$part" "$out/$part"
done
find "$out" -name '__pycache__' -prune -exec rm -rf {} +
rm -rf "$out/knowledge/.chroma" "$out/knowledge/.store"
echo "Space assembled in $out"
