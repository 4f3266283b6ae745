#!/usr/bin/env bash
# Build ward with profile-guided optimisation (issue 11, item 2): an instrumented release build,
# a training load through bench/proxy.sh's harness, the merged profile, then the optimised
# release build. The profile tells LLVM which paths are hot, so it lays them out together and
# inlines along them: ward's remaining HTTP/2 gap to HAProxy is time, not instructions (more
# instruction-cache misses per request), which is what code layout moves.
#
# The training load is the benchmark's own request mix and more: HTTP/1.1 and HTTP/2 (one and ten
# streams per connection) through the plain policy, JWT with a hot token and with 10,000 tokens,
# and the Redis limiter, so the profile covers the request path every case of bench/proxy.sh
# takes. Paths the training never takes (errors, reloads, the payments service) are built as
# "cold" code: correct, but laid out away from the hot path.
#
# Usage: bench/pgo.sh              (root installs the benchmark's tools; rustup adds llvm-tools;
#                                  the ward-redis case starts its own redis-server, as in proxy.sh)
# Settings, from the environment:
#   PGO_TARGET_DIR=target/pgo     cargo's target directory for both builds (kept apart from
#                                 target/, so the ordinary release build stays as it is)
#   TRAIN_SECONDS=4               seconds of each training load
#   SAVE_PROFILE=1                also write the profile that the image and CI build with
#                                 (.ci/release-build): bench/pgo/<target>.profdata, sparse (only
#                                 the functions the training ran; 1.4 MB instead of 11), and
#                                 bench/pgo/<target>.txt, what it was made from; commit both
# Both builds take the build lock other engineers' builds take (flock /tmp/ward-cargo.lock): do not run
# this script under it.
# Output: $PGO_TARGET_DIR/use/<target>/release/ward (the path is printed last) and the merged
# profile, $PGO_TARGET_DIR/ward-<hash of its content>.profdata: the hash in the path puts it in
# RUSTFLAGS, so cargo rebuilds everything when the profile changes (it tracks flags, not the file).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
PGO_TARGET_DIR=${PGO_TARGET_DIR:-$REPO_DIR/target/pgo}
TRAIN_SECONDS=${TRAIN_SECONDS:-4}
# An explicit target keeps RUSTFLAGS off build scripts and proc macros, which run on the host:
# only ward and its dependencies are instrumented and optimised.
TARGET=$(rustc -vV | sed -n 's/^host: //p')

log() { printf '[pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# llvm-profdata of the LLVM that rustc was built with: an older one (Debian's) cannot read the
# raw profiles this rustc's instrumentation writes.
sysroot=$(rustc --print sysroot)
profdata=$sysroot/lib/rustlib/$TARGET/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
    log "adding rustup's llvm-tools component (llvm-profdata for this rustc)"
    rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
fi
[[ -x $profdata ]] || die "no llvm-profdata at $profdata"

data=$(mktemp -d "${TMPDIR:-/tmp}/ward-pgo.XXXXXX")
trap 'rm -rf "$data"' EXIT
# A fixed directory for the raw profiles keeps RUSTFLAGS the same from run to run, so a second run
# rebuilds only what changed.
raw_dir=$PGO_TARGET_DIR/raw
rm -rf "$raw_dir"
mkdir -p "$raw_dir"

log "instrumented build (RUSTFLAGS=-Cprofile-generate) into $PGO_TARGET_DIR/gen"
(cd "$REPO_DIR" && RUSTFLAGS="-Cprofile-generate=$raw_dir" flock /tmp/ward-cargo.lock \
    cargo build --release --locked --quiet --target "$TARGET" --target-dir "$PGO_TARGET_DIR/gen")
gen_bin=$PGO_TARGET_DIR/gen/$TARGET/release/ward

# Every ward the harness starts writes its counters when it exits (the harness stops servers with
# SIGTERM, and ward's graceful shutdown returns from main): one file per process.
log "training load: ${TRAIN_SECONDS}s per case and protocol"
LLVM_PROFILE_FILE="$raw_dir/ward-%p-%m.profraw" WARD_BIN=$gen_bin WARD_BIN_B= \
    ROUNDS=1 WARMUP=1 DURATION=$TRAIN_SECONDS RESULTS= TOKENS=${TOKENS:-10000} \
    CASES="ward ward-jwt ward-jwt10k ward-redis" PROTOCOLS="h1 h2 h2m10" \
    "$BENCH_DIR/proxy.sh" >"$data/train.txt" 2>&1 || {
    tail -20 "$data/train.txt" >&2
    die "the training load failed (its output is above)"
}
# What the training served, so a failed case shows (it would leave its path out of the profile).
awk '$1 ~ /^ward/ && $2 ~ /^h[12]/ && $3 ~ /^[0-9]+$/ {printf "  %-12s %-6s %9s req/s\n", $1, $2, $3}' \
    "$data/train.txt" >&2
shopt -s nullglob
raw=("$raw_dir"/ward-*.profraw)
((${#raw[@]} > 0)) || die "the training left no profile (did ward exit cleanly?)"
"$profdata" merge -o "$data/ward.profdata" "${raw[@]}"
rm -f "$PGO_TARGET_DIR"/ward-*.profdata
profile=$PGO_TARGET_DIR/ward-$(sha256sum "$data/ward.profdata" | cut -c1-16).profdata
mv "$data/ward.profdata" "$profile"
log "merged ${#raw[@]} profiles into $profile"
if [[ -n ${SAVE_PROFILE:-} ]]; then
    saved=$BENCH_DIR/pgo/$TARGET.profdata
    mkdir -p "$BENCH_DIR/pgo"
    "$profdata" merge --sparse -o "$saved" "$profile"
    {
        printf 'bench/pgo/%s.profdata: made by SAVE_PROFILE=1 bench/pgo.sh\n' "$TARGET"
        printf 'sources: %s%s\n' "$(git -C "$REPO_DIR" rev-parse --short HEAD)" \
            "$(git -C "$REPO_DIR" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes to src or Cargo files)')"
        printf 'date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        printf 'rustc: %s\n' "$(rustc -V)"
        printf 'training (%s s per case and protocol, req/s of the instrumented build):\n' "$TRAIN_SECONDS"
        awk '$1 ~ /^ward/ && $2 ~ /^h[12]/ && $3 ~ /^[0-9]+$/ {printf "  %-12s %-6s %9s\n", $1, $2, $3}' "$data/train.txt"
    } >"$BENCH_DIR/pgo/$TARGET.txt"
    log "saved the sparse profile as $saved (commit it with bench/pgo/$TARGET.txt)"
fi

log "optimised build (RUSTFLAGS=-Cprofile-use) into $PGO_TARGET_DIR/use"
(cd "$REPO_DIR" && RUSTFLAGS="-Cprofile-use=$profile" flock /tmp/ward-cargo.lock \
    cargo build --release --locked --quiet --target "$TARGET" --target-dir "$PGO_TARGET_DIR/use")
out=$PGO_TARGET_DIR/use/$TARGET/release/ward
[[ -x $out ]] || die "the optimised build did not produce $out"
log "done"
printf '%s\n' "$out"
