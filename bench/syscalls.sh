#!/usr/bin/env bash
# System calls per request (issue 11): strace -c attached to each proxy while it serves N
# keep-alive requests (after 200 of warm-up, not counted), over HTTP/1.1 and HTTP/2. Counts, not
# times: like callgrind's instruction counts they do not move with machine noise, so they tell
# whether a CPU-time gap is made of system calls. strace slows the servers down; only the
# counts are read.
#
# Usage: bench/syscalls.sh   (settings of bench/lib.sh apply; CASES="ward haproxy nginx", N=20000)
set -Eeuo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CASES=${CASES:-ward haproxy nginx}
N=${N:-20000}
NGINX_SINGLE_PROCESS=1
command -v strace >/dev/null || die "strace is required (apt-get install strace)"
check_cases
ensure_tools
ensure_ward
trap cleanup EXIT
start_upstream
out=$RUN_DIR/syscalls
mkdir -p "$out"
for c in $CASES; do
    start_case "$c"
    wait_case "$c" 60
    for proto in h1 h2; do
        flags=(-c 16)
        [[ $proto == h1 ]] && flags+=(--h1) || flags+=(-m 1)
        timeout 300 taskset -c "$LOAD_CPU" h2load -n 200 "${flags[@]}" "$(url "$c" "$proto")" >/dev/null 2>&1
        attach=()
        while read -r pid; do attach+=(-p "$pid"); done < <(pids_of "$c")
        strace -f -c -o "$out/$c-$proto.txt" "${attach[@]}" 2>/dev/null &
        tracer=$!
        sleep 1
        timeout 300 taskset -c "$LOAD_CPU" h2load -n "$N" "${flags[@]}" "$(url "$c" "$proto")" >"$out/load.txt" 2>&1
        kill -INT "$tracer"
        wait "$tracer" || true
        ok=$(awk '/^status codes:/ {print $3}' "$out/load.txt")
        [[ $ok == "$N" ]] || die "$c $proto: $ok of $N requests answered 2xx"
    done
    stop "$c"
done
printf '\nSystem calls per request (strace -c attached during %s keep-alive requests over 16 connections)\n\n' "$N"
for proto in h1 h2; do
    for c in $CASES; do
        printf '%-10s %-3s ' "$c" "$proto"
        awk -v n="$N" 'NF >= 5 && $1 ~ /^[0-9.]+$/ { if ($NF == "total") t = $4 / n; else printf "%.6f %s\n", $4 / n, $NF }
            END { printf "1000000000 total %.2f\n", t }' "$out/$c-$proto.txt" | sort -rn | head -7 |
            awk '$1 == 1000000000 { total = $2 " " $3; next } { line = line sprintf("%s %.2f  ", $2, $1) } END { printf "%-14s %s\n", total, line }'
    done
done
