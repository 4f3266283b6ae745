#!/usr/bin/env bash
# Memory per idle keep-alive TLS connection (issue 11, item 3): ward, HAProxy and nginx with the
# configurations bench/proxy.sh uses, each holding N (9,000) idle connections from loopback.
#
# For each case and protocol, on a freshly started server: warm it up (640 requests over 64
# connections, closed again, so that the upstream pool and lazily made structures exist), read
# its resident memory (VmRSS; nginx: master and worker), open N TLS connections that each make
# one request and then stay idle (bench/idle.py; over HTTP/2 it answers PINGs), wait SETTLE
# seconds, read the resident memory again and count the established connections. Memory per
# connection = (after - before) / N.
#
# For this test only, the connection caps are set above N (HAProxy maxconn and ward's
# server.max_connections, default 10,000, to N + 500; nginx's worker_connections to N + N/8 +
# 1000, since nginx closes idle connections once fewer than 1/16 of them are free), and ward's
# server.header_read_timeout goes from 10 s to 300 s: ward closes an idle HTTP/1.1 keep-alive
# connection when that timeout runs out (it also bounds the wait for the next request), while
# HAProxy and nginx keep them for the 300 s of their keep-alive timeouts.
#
# Usage: bench/idle.sh           (from anywhere; root installs missing tools)
# Settings, from the environment (and those of bench/lib.sh):
#   CASES="ward haproxy nginx"   PROTOCOLS="h1 h2"
#   N=9000          idle connections held (HAProxy keeps two descriptors per connection of its
#                   maxconn: 10,000 would need an open file limit above 20,014, and a container
#                   without CAP_SYS_RESOURCE cannot raise its hard limit, 20,000 here)
#   PARALLEL=64     connections being set up at once
#   SETTLE=3        seconds between the last connection and the measurement
#   RESULTS=bench/results/idle   writes RESULTS.csv and RESULTS.txt; empty: none
#   HEAP=           1: where ward's memory per idle connection goes instead (ward only): ward,
#                   built with --features system-allocator (into target/heap, so the usual build
#                   is left alone; HEAP_BIN=path skips the build), runs under valgrind's DHAT
#                   while it holds N (1,000 by default in this mode) idle connections, and
#                   bench/heap.py splits its heap at the peak by allocation site and component.
#                   Writes RESULTS (default bench/results/idle-heap).txt.
set -Eeuo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HEAP=${HEAP:-}
HEAP_BIN=${HEAP_BIN:-}
PROTOCOLS=${PROTOCOLS:-h1 h2}
PARALLEL=${PARALLEL:-64}
SETTLE=${SETTLE:-3}
if [[ -n $HEAP ]]; then
    CASES=${CASES:-ward}
    N=${N:-1000}
    RESULTS=${RESULTS-$BENCH_DIR/results/idle-heap}
else
    CASES=${CASES:-ward haproxy nginx}
    N=${N:-9000}
    RESULTS=${RESULTS-$BENCH_DIR/results/idle}
fi

MAXCONN=$((N + 500))
# nginx closes idle keep-alive connections to make room once fewer than 1/16 of its
# worker_connections are free: keep well clear of that.
NGINX_MAXCONN=$((N + N / 8 + 1000))
WARD_POLICY_EXTRA="server:
  max_connections: $MAXCONN
  header_read_timeout: 300s"

# established PORT: TCP connections established to 127.0.0.1:PORT, server side.
established() {
    ss -Htn state established "( sport = :$1 )" | wc -l
}

measure() {
    local c=$1 proto=$2 port=${CASE_PORT[$1]} before after open closed line
    if [[ -n $HEAP ]]; then WRAP=(valgrind --tool=dhat --quiet "--dhat-out-file=$RUN_DIR/dhat-$c-$proto.json"); fi
    start_case "$c"
    wait_case "$c" "$([[ -n $HEAP ]] && echo 120 || echo 30)"
    local -a h1=()
    [[ $proto == h1 ]] && h1=(--h1)
    timeout 120 taskset -c "$LOAD_CPU" h2load -n 640 -c 64 ${h1[@]+"${h1[@]}"} \
        "$(url "$c" "$proto")" >"$RUN_DIR/warmup.out" 2>&1 ||
        die "warm-up of $c failed: $(tail -3 "$RUN_DIR/warmup.out")"
    sleep 1
    before=$(rss_kib "$(server "$c")")

    coproc HOLD { exec timeout 900 taskset -c "$LOAD_CPU" "$PYTHON" "$BENCH_DIR/idle.py" "$port" "$proto" "$N" "$PARALLEL"; }
    # shellcheck disable=SC2153 # HOLD_PID is set by coproc
    LOAD_PID=$HOLD_PID
    local t0=$SECONDS
    read -r line <&"${HOLD[0]}" || line="no answer"
    [[ $line == "ready $N" ]] || die "$c $proto: idle.py: $line"
    local setup=$((SECONDS - t0))
    sleep "$SETTLE"
    after=$(rss_kib "$(server "$c")")
    open=$(established "$port")
    local fd=${HOLD[1]}
    exec {fd}>&- # end of idle.py's input: it reports and closes everything
    read -r line <&"${HOLD[0]}" || line="closed_by_server ?"
    closed=${line#closed_by_server }
    wait "$LOAD_PID" 2>/dev/null || true
    LOAD_PID=
    stop "$c"
    if [[ -n $HEAP ]]; then
        [[ -s $RUN_DIR/dhat-$c-$proto.json ]] || die "$c $proto: DHAT wrote no profile (see $RUN_DIR/$c.out)"
        {
            printf '\n### %s, %s: %s idle connections (%s established)\n\n' "$c" "$proto" "$N" "$open"
            "$PYTHON" "$BENCH_DIR/heap.py" "$RUN_DIR/dhat-$c-$proto.json" "$N"
        } >>"$RUN_DIR/heap.md"
        log "$c $proto: heap profile of $N idle connections taken"
        return
    fi
    local per
    per=$(awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN {printf "%.1f", (a - b) / n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$proto" "$N" "$open" "$before" "$after" "$per" "$closed" >>"$RUN_DIR/idle.tsv"
    log "$(printf '%-8s %-3s %6s connections (%s established, %s closed by the server; set up in %s s): RSS %s -> %s KiB, %s KiB/connection' \
        "$c" "$proto" "$N" "$open" "$closed" "$setup" "$before" "$after" "$per")"
}

report() {
    printf '\nResident memory per idle keep-alive TLS connection: %s connections, one request each, then idle;\n' "$N"
    printf 'RSS after minus RSS before (after a warm-up), divided by %s. Ratios against haproxy.\n\n' "$N"
    printf '%-8s %-5s %7s %11s %11s %11s %8s %9s %7s\n' case proto conns established rss_before rss_after KiB/conn /haproxy closed
    local proto c
    for proto in $PROTOCOLS; do
        for c in $CASES; do
            awk -F'\t' -v c="$c" -v p="$proto" '$1 == "haproxy" && $2 == p {h = $7} $1 == c && $2 == p {r = $0}
                END { split(r, f, "\t")
                      printf "%-8s %-5s %7s %11s %8.1f MiB %7.1f MiB %8s %9s %7s\n", f[1], f[2], f[3], f[4], f[5] / 1024,
                          f[6] / 1024, f[7], (h + 0 > 0 ? sprintf("%.2f", f[7] / h) : "-"), f[8] }' "$RUN_DIR/idle.tsv"
        done
    done
}

main() {
    check_cases
    local c proto
    for c in $CASES; do
        if [[ $c == upstream* ]] || is_jwt "$c"; then die "idle.sh measures the proxies without JWT, not $c"; fi
    done
    ensure_tools h2load:nghttp2-client ss:iproute2
    [[ -n $PYTHON ]] || PYTHON=python3
    if [[ -n $HEAP ]]; then
        for c in $CASES; do is_ward "$c" || die "HEAP=1 profiles ward only, not $c"; done
        ensure_tools valgrind:valgrind
        if [[ -z $HEAP_BIN ]]; then
            log "building ward with --features system-allocator into target/heap (DHAT sees only malloc)"
            (cd "$REPO_DIR" && flock /tmp/ward-cargo.lock cargo build --release --quiet --locked \
                --features system-allocator --target-dir target/heap)
            HEAP_BIN=$REPO_DIR/target/heap/release/ward
        fi
        WARD_BIN=$HEAP_BIN
    fi
    ensure_ward
    # Each connection is a descriptor in idle.py and one in the server (both inherit this limit),
    # up to the hard limit (raising that needs CAP_SYS_RESOURCE, which a container may lack).
    local want=$((2 * N + 4096)) hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((want > hard)); then want=$hard; fi
    ulimit -n "$want"
    # HAProxy refuses to start unless it has two descriptors per connection of maxconn.
    (($(ulimit -n) >= 2 * MAXCONN + 100)) ||
        die "the open file limit $(ulimit -n) is too low for N=$N: HAProxy needs $((2 * MAXCONN + 100)) (hard limit $hard)"
    start_upstream
    : >"$RUN_DIR/idle.tsv"
    {
        printf 'machine: %s, %s cores, %s\n' \
            "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(nproc)" "$(uname -sr)"
        printf 'tools: %s; %s; %s; %s\n' "$("$PYTHON" --version 2>&1)" \
            "$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $1, $2, $3}')" "$(nginx -v 2>&1)" "$(openssl version)"
        if any_case is_ward; then printf 'ward: %s (%s)\n' "$("$WARD_BIN" --version 2>&1 | head -1)" "$WARD_BIN"; fi
        printf 'date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    } >"$RUN_DIR/report.txt"
    cat "$RUN_DIR/report.txt"
    for proto in $PROTOCOLS; do
        for c in $CASES; do measure "$c" "$proto"; done
    done
    if [[ -n $HEAP ]]; then
        tee -a "$RUN_DIR/report.txt" <"$RUN_DIR/heap.md"
        if [[ -n $RESULTS ]]; then
            mkdir -p "$(dirname "$RESULTS")"
            cp "$RUN_DIR/report.txt" "$RESULTS.txt"
            log "results in $RESULTS.txt"
        fi
        return
    fi
    report | tee -a "$RUN_DIR/report.txt"
    if [[ -n $RESULTS ]]; then
        mkdir -p "$(dirname "$RESULTS")"
        {
            echo case,proto,connections,established,rss_before_kib,rss_after_kib,kib_per_connection,closed_by_server
            tr '\t' , <"$RUN_DIR/idle.tsv"
        } >"$RESULTS.csv"
        cp "$RUN_DIR/report.txt" "$RESULTS.txt"
        log "results in $RESULTS.csv and $RESULTS.txt"
    fi
}

main "$@"; exit
