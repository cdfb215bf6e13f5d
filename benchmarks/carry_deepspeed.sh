#!/usr/bin/env bash
# Copy DeepSpeed and the packages it imports from this machine's venv into .gpu_carry/site
# (in .gitignore), for the device tool's `carry` (~22 MB).
# pydantic_core and psutil are compiled: the device's Python must be the same minor version.
set -eu
site=$(python -c "import importlib.util, os; print(os.path.dirname(os.path.dirname(importlib.util.find_spec('deepspeed').origin)))")
dest=.gpu_carry/site
mkdir -p "$dest"
for pkg in deepspeed hjson pydantic pydantic_core annotated_types typing_inspection msgpack cpuinfo einops \
           psutil ninja; do
  rm -rf "$dest/$pkg"
  cp -r "$site/$pkg" "$dest/"
done
cp -r "$site"/deepspeed-*.dist-info "$site"/pydantic-*.dist-info "$dest/" 2>/dev/null || true
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$dest"
