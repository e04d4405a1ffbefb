#!/bin/sh
# Builds {{name}}.wasm, a Portico plugin, with componentize-py: app.py and
# portico.py, with CPython, made a component for the contract's handler
# world. Serve it with: host --plugin {{name}}.wasm
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null; then
    echo "build.sh: componentize-py is not installed: pip install componentize-py==0.25.1 (see README.md)" >&2
    exit 1
fi
componentize-py --wit-path wit --world handler componentize app -o {{name}}.wasm
