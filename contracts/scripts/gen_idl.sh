#!/usr/bin/env bash
# Regenerates the committed IDLs from the program:
#   idl/dgpu_escrow.json         as `anchor idl build` makes it (anchor-lang-idl's IdlBuilder, run by
#                                the Rust test idl::committed_idl_matches_the_program with DGPU_WRITE_IDL=1;
#                                without it, that test fails when this file is stale)
#   idl/dgpu_escrow.legacy.json  its legacy form for anchorpy 0.21 (scripts/idl_to_legacy.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dgpu/cargo-target}"
DGPU_WRITE_IDL=1 nice -n 10 cargo test --locked --test native -- --exact idl::committed_idl_matches_the_program
PY="${PYTHON:-../.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" scripts/idl_to_legacy.py idl/dgpu_escrow.json > idl/dgpu_escrow.legacy.json.tmp
mv idl/dgpu_escrow.legacy.json.tmp idl/dgpu_escrow.legacy.json
echo "wrote idl/dgpu_escrow.json and idl/dgpu_escrow.legacy.json"
