#!/bin/sh
# Builds {{name}}.wasm, a Portico plugin (a WASI command), with cargo for the wasm32-wasip2
# target. Serve it with: host --plugin {{name}}.wasm
set -eu
cd "$(dirname "$0")"
if ! command -v cargo >/dev/null; then
    echo "build.sh: cargo is not installed: see https://rustup.rs" >&2
    exit 1
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{name}}.wasm" {{name}}.wasm
echo "built {{name}}.wasm"
