#!/bin/sh
# Builds {{name}}.wasm, a Portico plugin, with componentize-js: app.js and
# portico.js, with the SpiderMonkey engine, made a component for the
# contract's handler world. Serve it with: host --plugin {{name}}.wasm
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-js >/dev/null; then
    echo "build.sh: componentize-js is not installed: npm install -g @bytecodealliance/componentize-js@0.23.0 (see README.md)" >&2
    exit 1
fi
# Portico serves raw TCP: no wasi:http to import.
componentize-js app.js --wit wit --world-name handler \
    --disable http fetch-event --out {{name}}.wasm
