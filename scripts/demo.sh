#!/usr/bin/env bash
# The engine demonstration: write page versions into a timeline store, flush them to layer files,
# read every page back at every checkpoint LSN, then inspect one layer file.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.build/release
dir=.demo/engine
rm -rf "$dir"
mkdir -p "$dir"
echo "== writing and reading back page versions (store in $dir)"
"$bin/pagectl" engine demo --workdir "$dir"
layer=$(ls "$dir" | grep '\.delta$' | sort | tail -n 1)
echo
echo "== pagectl layer inspect $dir/$layer"
"$bin/pagectl" layer inspect "$dir/$layer"
echo
echo "== pagectl layer dump (first entries)"
"$bin/pagectl" layer dump "$dir/$layer" | head -n 14
rm -rf .demo
