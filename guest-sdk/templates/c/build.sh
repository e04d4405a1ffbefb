#!/bin/sh
# Builds {{name}}.wasm, a Portico plugin, with clang and wasi-libc for
# wasm32-wasi (WASI preview 1), then makes the module a component with
# wasm-tools and the preview 1 reactor adapter of the Portico host that
# wrote this project. Serve it with: host --plugin {{name}}.wasm
#
# CC and WASI_SYSROOT choose another clang and wasi-libc (Debian's are the
# default: clang-14, and wasi-libc under /usr).
set -eu
cd "$(dirname "$0")"
CC=${CC:-clang-14}
WASI_SYSROOT=${WASI_SYSROOT:-/usr}
for tool in "$CC" wasm-tools; do
    if ! command -v "$tool" >/dev/null; then
        echo "build.sh: $tool is not installed: see README.md" >&2
        exit 1
    fi
done
"$CC" --target=wasm32-wasi --sysroot="$WASI_SYSROOT" -mexec-model=reactor \
    -O2 -Wall -Wl,--strip-debug -I bindings -I . \
    bindings/handler.c bindings/handler_component_type.o portico.c {{name}}.c \
    -o {{name}}.core.wasm
wasm-tools component new {{name}}.core.wasm \
    --adapt wasi_snapshot_preview1.reactor.wasm -o {{name}}.wasm
rm {{name}}.core.wasm
echo "built {{name}}.wasm"
