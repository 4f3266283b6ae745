#!/usr/bin/env bash
# Instructions per request (issue 11, item 1): each proxy under valgrind's callgrind, which counts
# the instructions a process executes whatever else the machine does, so the figures repeat to
# within a fraction of a percent and can be compared before and after a change.
#
# For each case (one at a time) and protocol: start the server under callgrind with the
# configuration bench/proxy.sh uses, send WARMUP_REQUESTS keep-alive requests (not counted),
# then two counted runs of REQUESTS_SHORT and REQUESTS_SHORT + REQUESTS requests over the same
# number of new connections (h2load; counters zeroed before and dumped after each run with
# callgrind_control). The difference is REQUESTS requests' worth of work without the connection
# set-up and TLS handshakes, which both runs have alike: instructions per request = difference /
# REQUESTS. Only user-space instructions count (no kernel), all the server's threads together
# (nginx runs as a single process here: master_process off).
#
# Usage: bench/cost.sh           (from anywhere; root installs missing tools)
# Settings, from the environment (and those of bench/lib.sh):
#   CASES="ward haproxy nginx"   any of ward ward-bearer ward-jwt ward-jwt10k-nocache ward-redis haproxy
#                                haproxy-jwt haproxy-jwt10k nginx (not ward-jwt10k: which of its
#                                tokens are cached would depend on the run; its cached cost is
#                                ward-jwt's). The *-jwt10k cases send distinct tokens in the query,
#                                one URI per token (h2load), over HTTP/1.1 and HTTP/2 alike.
#   PROTOCOLS="h1 h2"            h1: h2load --h1; h2: h2load, 1 stream per connection;
#                                h2m10: 10 concurrent streams per connection
#   REQUESTS=2000 REQUESTS_SHORT=200 WARMUP_REQUESTS=200 CONNECTIONS=16
#   CACHE_SIM=                   1: also simulate the caches (callgrind --cache-sim=yes) and report
#                                first-level instruction and data cache misses per request beside
#                                the instructions: code layout shows there, not in instruction counts
#   CG_OPTS=                     more callgrind options (CG_DIR=/tmp/cg keeps the dumps)
#   BREAKDOWN=                   1: also where the instructions go, per case and protocol:
#                                by component (self cost) and the top functions (inclusive)
#   RESULTS=bench/results/cost   writes RESULTS.csv and RESULTS.txt (the printed report);
#                                empty: none
set -Eeuo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CASES=${CASES:-ward haproxy nginx}
PROTOCOLS=${PROTOCOLS:-h1 h2}
REQUESTS=${REQUESTS:-2000}
REQUESTS_SHORT=${REQUESTS_SHORT:-200}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-200}
CONNECTIONS=${CONNECTIONS:-16}
BREAKDOWN=${BREAKDOWN:-}
RESULTS=${RESULTS-$BENCH_DIR/results/cost}

# valgrind's callgrind_control cannot reach a forked child, so nginx runs as one process
# (master_process off: the worker's code, without a master).
NGINX_SINGLE_PROCESS=1
CG_DIR=${CG_DIR:-$RUN_DIR/callgrind}   # CG_DIR=/path keeps the callgrind files
# CG_OPTS: more callgrind options (CACHE_SIM=1 adds --cache-sim=yes; the instruction counts stay
# the first event of the dumps and are unchanged).
CACHE_SIM=${CACHE_SIM:-}
read -r -a CG_EXTRA <<<"${CG_OPTS:-}"
if [[ -n $CACHE_SIM ]]; then CG_EXTRA+=(--cache-sim=yes); fi
WRAP=(valgrind --tool=callgrind --quiet ${CG_EXTRA[@]+"${CG_EXTRA[@]}"} "--callgrind-out-file=$CG_DIR/%q{BENCH_CASE}.%p.out")

# run_load CASE PROTO N: N requests over CONNECTIONS new connections, on the load core.
run_load() {
    local c=$1 proto=$2 n=$3 out=$RUN_DIR/load.out
    local -a args=(-n "$n" -c "$CONNECTIONS")
    case $proto in
        h1) args+=(--h1) ;;
        h2) args+=(-m 1) ;;
        h2m*) args+=(-m "${proto#h2m}") ;;
        *) die "unknown protocol $proto" ;;
    esac
    if many_tokens "$c"; then
        # The same URIs (tokens in the query) for h1 and h2; the first names host and port.
        args+=(-i "$RUN_DIR/jwt/uris-$c.txt")
    elif sends_token "$c"; then
        args+=(-H "authorization: Bearer $HOT_TOKEN" "$(url "$c" "$proto")")
    else
        args+=("$(url "$c" "$proto")")
    fi
    timeout 900 taskset -c "$LOAD_CPU" h2load "${args[@]}" >"$out" 2>&1 || die "h2load failed: $(tail -3 "$out")"
    local ok
    ok=$(awk '/^status codes:/ {print $3}' "$out")
    [[ $ok == "$n" ]] || die "$c $proto: $ok of $n requests answered 2xx: $(grep -E '^(requests|status codes):' "$out")"
    if [[ $proto == h2* ]]; then
        grep -q '^Application protocol: h2' "$out" || die "h2load did not speak h2 to $c"
    else
        grep -q '^Application protocol: http/1.1' "$out" || die "h2load did not speak http/1.1 to $c"
    fi
}

# counted CASE PROTO N: zero the counters of CASE's processes, run N requests, dump; writes the
# instructions counted and the dump files (one per process) to RUN_DIR/counted, and the simulated
# first-level instruction and data cache read misses (0 without CACHE_SIM) to RUN_DIR/misses.
counted() {
    local c=$1 proto=$2 n=$3 pid total=0 i1=0 d1=0 f last
    local -a m pids files=()
    mapfile -t pids < <(pids_of "$c")
    for pid in "${pids[@]}"; do callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control -z $pid failed"; done
    run_load "$c" "$proto" "$n"
    for pid in "${pids[@]}"; do
        callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d $pid failed"
        # The newest dump of this process: the highest part number.
        last=$(find "$CG_DIR" -name "$c.$pid.out.*" -printf '%f\n' | sed 's/.*\.//' | sort -n | tail -1)
        f=$CG_DIR/$c.$pid.out.$last
        [[ -n $last && -s $f ]] || die "no callgrind dump for $c ($pid)"
        total=$((total + $(awk '/^totals:/ {print $2; exit}' "$f")))
        # The events line names the columns of the totals line (Ir first; I1mr, D1mr with the
        # cache simulation).
        read -r -a m < <(awk '/^events:/ {for (i = 2; i <= NF; i++) col[$i] = i}
            /^totals:/ {print ("I1mr" in col ? $(col["I1mr"]) : 0), ("D1mr" in col ? $(col["D1mr"]) : 0); exit}' "$f")
        i1=$((i1 + m[0]))
        d1=$((d1 + m[1]))
        files+=("$f")
    done
    echo "$total ${files[*]}" >"$RUN_DIR/counted"
    echo "$i1 $d1" >"$RUN_DIR/misses"
}

measure_case() {
    local c=$1 proto short long fshort flong per i1 d1
    local -a a b ma mb
    mkdir -p "$CG_DIR"
    start_case "$c"
    wait_case "$c" 120
    for proto in $PROTOCOLS; do
        run_load "$c" "$proto" "$WARMUP_REQUESTS"
        counted "$c" "$proto" "$REQUESTS_SHORT"
        read -r -a a <"$RUN_DIR/counted"
        read -r -a ma <"$RUN_DIR/misses"
        counted "$c" "$proto" $((REQUESTS_SHORT + REQUESTS))
        read -r -a b <"$RUN_DIR/counted"
        read -r -a mb <"$RUN_DIR/misses"
        short=${a[0]}
        long=${b[0]}
        per=$(((long - short) / REQUESTS))
        i1= d1=
        if [[ -n $CACHE_SIM ]]; then
            i1=$(((mb[0] - ma[0]) / REQUESTS))
            d1=$(((mb[1] - ma[1]) / REQUESTS))
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$proto" "$per" "$short" "$long" "$i1" "$d1" >>"$RUN_DIR/cost.tsv"
        log "$(printf '%-22s %-6s %10s instructions/request%s' "$c" "$proto" "$per" "${CACHE_SIM:+, $i1 I1 and $d1 D1 misses}")"
        if [[ -n $BREAKDOWN ]]; then
            # The process that does the work: the one whose count grew the most (nginx's worker).
            local i best=1 grow bestgrow=-1
            for ((i = 1; i < ${#a[@]}; i++)); do
                grow=$(($(awk '/^totals:/ {print $2; exit}' "${b[$i]}") - $(awk '/^totals:/ {print $2; exit}' "${a[$i]}")))
                if ((grow > bestgrow)); then best=$i bestgrow=$grow; fi
            done
            fshort=${a[$best]}
            flong=${b[$best]}
            {
                printf '\n### %s, %s: %s instructions/request\n\n' "$c" "$proto" "$per"
                "$PYTHON" "$BENCH_DIR/components.py" callgrind "$fshort" "$flong" "$REQUESTS" 15
                printf '\n'
                "$PYTHON" "$BENCH_DIR/components.py" inclusive "$fshort" "$flong" "$REQUESTS" 30
            } >>"$RUN_DIR/breakdown.md"
        fi
    done
    if uses_redis "$c"; then
        # Under valgrind ward is slow enough that a Redis answer may miss its deadline (250 ms by default);
        # then it counts locally and the figures are not those of the Redis path.
        local fb
        fb=$(ward_metric "$c" ward_rate_limit_fallbacks_total)
        printf 'ward-redis: %s fallbacks to local counting during the runs (must be 0)\n' "$fb" >>"$RUN_DIR/notes.txt"
        ((fb == 0)) || log "warning: ward-redis fell back to local counting $fb times"
    fi
    stop "$c"
    # The final dump written at exit is not needed; keep the directory small.
    find "$CG_DIR" -name "$c.*.out" -delete
}

report() {
    local c proto
    printf '\nInstructions per request (callgrind; user space, all threads), %s requests over %s keep-alive\n' \
        "$REQUESTS" "$CONNECTIONS"
    printf 'connections after %s of warm-up; the difference of two runs (%s and %s requests), so\n' \
        "$WARMUP_REQUESTS" "$REQUESTS_SHORT" $((REQUESTS_SHORT + REQUESTS))
    printf 'handshakes cancel out. /peer: against haproxy (haproxy-jwt, haproxy-jwt10k for the JWT cases).\n\n'
    if [[ -n $CACHE_SIM ]]; then
        printf 'I1 / D1 misses: simulated first-level instruction / data cache read misses per request\n'
        printf '(callgrind --cache-sim=yes, the caches valgrind reads off this CPU), /peer likewise.\n\n'
    fi
    printf '%-22s %-6s %14s %9s' case proto instr/request /peer
    if [[ -n $CACHE_SIM ]]; then printf ' %12s %7s %12s %7s' 'I1 misses' /peer 'D1 misses' /peer; fi
    printf '\n'
    for proto in $PROTOCOLS; do
        for c in $CASES; do
            local peer=haproxy
            if is_jwt "$c"; then peer=haproxy-jwt; fi
            if many_tokens "$c" && has_case haproxy-jwt10k; then peer=haproxy-jwt10k; fi
            awk -F'\t' -v c="$c" -v p="$proto" -v peer="$peer" -v sim="$CACHE_SIM" '
                function commas(x,   s) { s = sprintf("%d", x); while (s ~ /[0-9]{4}/) sub(/[0-9]{3}($|,)/, ",&", s); return s }
                function ratio(n, h) { return (h == "" || h == 0) ? "-" : sprintf("%.2f", n / h) }
                $1 == c && $2 == p { n = $3; i1 = $6; d1 = $7 }
                $1 == peer && $2 == p { h = $3; hi1 = $6; hd1 = $7 }
                END {
                    printf "%-22s %-6s %14s %9s", c, p, commas(n), ratio(n, h)
                    if (sim != "") printf " %12s %7s %12s %7s", commas(i1), ratio(i1, hi1), commas(d1), ratio(d1, hd1)
                    printf "\n"
                }' "$RUN_DIR/cost.tsv"
        done
    done
}

machine() {
    printf 'machine: %s, %s cores, %s\n' \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(nproc)" "$(uname -sr)"
    printf 'tools: %s; %s; %s; %s; %s\n' "$(valgrind --version)" "$(h2load --version 2>&1 | awk 'NR == 1')" \
        "$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $1, $2, $3}')" "$(nginx -v 2>&1)" "$(openssl version)"
    if any_case is_ward; then printf 'ward: %s (%s)\n' "$("$WARD_BIN" --version 2>&1 | head -1)" "$WARD_BIN"; fi
    printf 'date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
}

main() {
    check_cases
    local c
    for c in $CASES; do
        [[ $c == upstream* || $c == ward-jwt10k ]] && die "cost.sh does not measure $c"
    done
    ((REQUESTS > 0 && REQUESTS_SHORT >= CONNECTIONS && WARMUP_REQUESTS >= CONNECTIONS)) ||
        die "REQUESTS must be positive, REQUESTS_SHORT and WARMUP_REQUESTS at least CONNECTIONS"
    ensure_tools valgrind:valgrind callgrind_control:valgrind h2load:nghttp2-client
    [[ -n $PYTHON ]] || PYTHON=python3
    ensure_ward
    start_upstream
    : >"$RUN_DIR/cost.tsv"
    : >"$RUN_DIR/breakdown.md"
    : >"$RUN_DIR/notes.txt"
    machine >"$RUN_DIR/report.txt"
    cat "$RUN_DIR/report.txt"
    for c in $CASES; do measure_case "$c"; done
    report >>"$RUN_DIR/report.txt"
    if [[ -s $RUN_DIR/notes.txt ]]; then printf '\n' >>"$RUN_DIR/report.txt" && cat "$RUN_DIR/notes.txt" >>"$RUN_DIR/report.txt"; fi
    if [[ -n $BREAKDOWN ]]; then
        printf '\n## Where the instructions go\n' >>"$RUN_DIR/report.txt"
        cat "$RUN_DIR/breakdown.md" >>"$RUN_DIR/report.txt"
    fi
    sed -n '/^Instructions per request/,$p' "$RUN_DIR/report.txt"
    if [[ -n $RESULTS ]]; then
        mkdir -p "$(dirname "$RESULTS")"
        {
            echo case,proto,instructions_per_request,instructions_short_run,instructions_long_run,i1_misses_per_request,d1_misses_per_request
            tr '\t' , <"$RUN_DIR/cost.tsv"
        } >"$RESULTS.csv"
        cp "$RUN_DIR/report.txt" "$RESULTS.txt"
        log "results in $RESULTS.csv and $RESULTS.txt"
    fi
}

main "$@"; exit
