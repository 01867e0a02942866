#!/usr/bin/env bash
# Compatibility check: the official Rust CLI (`aleph-cli` 0.22 from crates.io,
# https://github.com/aleph-im/aleph-rs) against our devnet. It uploads a file,
# posts an aggregate and reads both back, with the official CLI and with ours,
# and fails loudly on any difference.
#
# Environment:
#   ALEPH_COMPAT_SKIP=1              skip (prints the reason, exits 0)
#   ALEPH_COMPAT_CACHE=DIR           where the official CLI is installed (default ~/.cache/aleph-compat)
#   ALEPH_COMPAT_INSTALL_TIMEOUT=S   give up installing after S seconds and skip (default 5400)
#   ALEPH_COMPAT_PORT=N              the devnet's CCN port (default 4024)
#
# Installing the official CLI compiles a few hundred crates (about an hour on
# 2 cores, once: the result is cached), which is why CI may skip this script.
set -euo pipefail

readonly OFFICIAL_VERSION=0.22.0
readonly ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly CACHE="${ALEPH_COMPAT_CACHE:-$HOME/.cache/aleph-compat}"
readonly PORT="${ALEPH_COMPAT_PORT:-4024}"
readonly CCN="http://127.0.0.1:${PORT}"

say() { printf '[compat] %s\n' "$*" >&2; }
fail() { printf '[compat] FAILED: %s\n' "$*" >&2; exit 1; }
skip() { printf '[compat] skipped: %s\n' "$*" >&2; echo "skipped"; exit 0; }

if [[ "${ALEPH_COMPAT_SKIP:-0}" == 1 ]]; then
    skip "ALEPH_COMPAT_SKIP=1 (installing the official CLI takes about an hour on 2 cores)"
fi

# --- the official CLI, installed once into the cache ------------------------
official="$CACHE/bin/aleph"
if ! [[ -x "$official" ]] || ! "$official" --version 2>/dev/null | grep -q "$OFFICIAL_VERSION"; then
    mkdir -p "$CACHE"
    say "installing aleph-cli $OFFICIAL_VERSION into $CACHE (long build; log: $CACHE/install.log)"
    set +e
    timeout "${ALEPH_COMPAT_INSTALL_TIMEOUT:-5400}" \
        cargo install aleph-cli --version "$OFFICIAL_VERSION" --locked --root "$CACHE" \
        >"$CACHE/install.log" 2>&1
    status=$?
    set -e
    if [[ $status == 124 ]]; then
        skip "installing aleph-cli $OFFICIAL_VERSION did not finish in time (see $CACHE/install.log)"
    elif [[ $status != 0 ]]; then
        tail -n 30 "$CACHE/install.log" >&2
        fail "cargo install aleph-cli $OFFICIAL_VERSION failed (exit $status)"
    fi
fi
say "official CLI: $("$official" --version)"

# --- our binaries and a devnet -----------------------------------------------
say "building aleph-node and aleph"
(cd "$ROOT" && cargo build --quiet -p aleph-node -p aleph-cli)
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
node="$target_dir/debug/aleph-node"
ours="$target_dir/debug/aleph"

work="$(mktemp -d)"
devnet_pid=""
cleanup() {
    if [[ -n "$devnet_pid" ]]; then
        kill -TERM "$devnet_pid" 2>/dev/null || true
        wait "$devnet_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    fail "port $PORT is already in use: stop what listens there or set ALEPH_COMPAT_PORT"
fi
"$node" devnet --data-dir "$work/devnet" --ccn-port "$PORT" --no-crn >"$work/devnet.out" 2>"$work/devnet.log" &
devnet_pid=$!
for _ in $(seq 1 600); do
    [[ -f "$work/devnet/devnet.json" ]] && break
    kill -0 "$devnet_pid" 2>/dev/null || { cat "$work/devnet.log" >&2; fail "the devnet exited"; }
    sleep 0.1
done
[[ -f "$work/devnet/devnet.json" ]] || fail "the devnet wrote no devnet.json in 60 s"

# The first account of devnet.json (no jq needed: the file is ours and simple).
json_first() { grep -o "\"$1\": *\"[^\"]*\"" "$work/devnet/devnet.json" | head -n 1 | sed 's/.*: *"\(.*\)"/\1/'; }
key="$(json_first private_key)"
address="$(json_first address)"
[[ -n "$key" && -n "$address" ]] || fail "no account in devnet.json"
say "devnet CCN at $CCN, signing as $address"

# The official CLI keeps its settings and keys under HOME: give it an empty one.
export HOME="$work/home" XDG_CONFIG_HOME="$work/home/.config" XDG_DATA_HOME="$work/home/.local/share"
mkdir -p "$XDG_CONFIG_HOME" "$XDG_DATA_HOME"
unset ALEPH_PRIVATE_KEY ALEPH_CCN
official_run() {
    say "official: aleph $*"
    if ! "$official" --ccn "$CCN" "$@" >"$work/out" 2>"$work/err"; then
        cat "$work/out" "$work/err" >&2
        fail "the official CLI failed: aleph $*"
    fi
    cat "$work/out"
}
ours_run() {
    say "ours: aleph $*"
    "$ours" --ccn "$CCN" "$@" 2>"$work/err" || { cat "$work/err" >&2; fail "our CLI failed: aleph $*"; }
}
no_space() { tr -d ' \n\t'; }

# --- a file: uploaded by the official CLI, read back by both ------------------
head -c 300000 /dev/urandom >"$work/upload.bin"
file_hash="$(sha256sum "$work/upload.bin" | cut -d' ' -f1)"
upload="$(official_run file upload "$work/upload.bin" --private-key "$key" --chain eth --json)"
echo "$upload" | grep -q '"message_status": *"processed"' \
    || fail "the STORE message of the upload is not processed: $upload"
store_hash="$(echo "$upload" | grep -o '"item_hash": *"[0-9a-f]*"' | sed 's/.*"\([0-9a-f]*\)"$/\1/')"
say "uploaded $file_hash with STORE $store_hash"

official_run file download "$file_hash" -o "$work/official-download.bin" >/dev/null
cmp "$work/upload.bin" "$work/official-download.bin" \
    || fail "the file downloaded by the official CLI differs from the upload"
ours_run file download "$file_hash" -o "$work/our-download.bin" >/dev/null
cmp "$work/upload.bin" "$work/our-download.bin" \
    || fail "the file downloaded by our CLI differs from the upload"
stored="$(ours_run message get "$store_hash" --json)"
echo "$stored" | grep -q "\"item_hash\": *\"$file_hash\"" \
    || fail "the STORE message does not name the file $file_hash: $stored"

# --- an aggregate: posted by the official CLI, read back by both --------------
expected='{"hello":"world","n":1}'
official_run aggregate create --key compat --content "$expected" --private-key "$key" --chain eth --json >/dev/null
# The official CLI prints the CCN's `data`: the requested keys with their content.
got="$(official_run aggregate get compat --address "$address" --json | no_space)"
[[ "$got" == "{\"compat\":$expected}" ]] || fail "official aggregate get: expected {\"compat\":$expected}, got $got"
got="$(ours_run aggregate get compat --address "$address" --json | no_space)"
[[ "$got" == "$expected" ]] || fail "our aggregate get: expected $expected, got $got"

# --- and the other way: our CLI writes, the official one reads ----------------
ours_run aggregate post from-ours '{"by":"aleph-rust"}' --private-key "$key" >/dev/null
got="$(official_run aggregate get from-ours --address "$address" --json | no_space)"
[[ "$got" == '{"from-ours":{"by":"aleph-rust"}}' ]] || fail "official get of our aggregate: got $got"

say "all checks passed"
echo "passed"
