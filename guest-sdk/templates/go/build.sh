#!/bin/sh
# Builds {{name}}.wasm, a Portico plugin, with Go for WASI preview 1
# (GOOS=wasip1) as a library the host calls into, records the contract's
# world in it and makes it a component with wasm-tools and the preview 1
# reactor adapter of the Portico host that wrote this project. Serve it
# with: host --plugin {{name}}.wasm
set -eu
cd "$(dirname "$0")"
for tool in go wasm-tools; do
    if ! command -v "$tool" >/dev/null; then
        echo "build.sh: $tool is not installed: see README.md" >&2
        exit 1
    fi
done
# -checklinkname=0: the bindings' runtime reaches into Go's allocator,
# which Go 1.23 and later refuse without it.
GOOS=wasip1 GOARCH=wasm GOTOOLCHAIN=local \
    go build -trimpath -buildmode=c-shared -ldflags=-checklinkname=0 -o {{name}}.core.wasm .
wasm-tools component embed wit --world handler {{name}}.core.wasm -o {{name}}.core.wasm
wasm-tools component new {{name}}.core.wasm \
    --adapt wasi_snapshot_preview1.reactor.wasm -o {{name}}.wasm
rm {{name}}.core.wasm
echo "built {{name}}.wasm"
