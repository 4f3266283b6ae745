#!/usr/bin/env bash
# Benchmark ward against HAProxy and nginx (issue 2, "Performance").
#
# One interleaved run: every round runs each protocol against each case, in a
# rotated order, so that drift on a shared machine spreads over all cases.
# Cases: the upstream direct (plain HTTP), the upstream behind TLS only, ward,
# HAProxy and nginx, the three proxies with the same policy (TLS, a rate limit
# that never triggers, security headers, a 1 MiB body limit).
# The load generator runs on one core, the proxy and the upstream on the other.
#
# Usage: bench/proxy.sh            (from anywhere; root installs missing tools)
# Settings, from the environment:
#   DURATION=10     seconds of each measured load run
#   WARMUP=2        seconds of load before each measured run, not measured
#   ROUNDS=3        interleaved rounds; the table shows the median of rounds
#   CONNECTIONS=64  keep-alive connections
#   CASES="upstream upstream-tls ward haproxy nginx"
#   PROTOCOLS="h1 h2 h2m10"   h1: wrk; h2: h2load, 1 stream per connection;
#                             h2m10: h2load, 10 concurrent streams per connection
#   LOAD_CPU=0 PROXY_CPU=1    cores for the load generator and for the servers
#   PORT_BASE=18080           ports PORT_BASE..PORT_BASE+6 on 127.0.0.1
#   WARD_BIN=target/release/ward   built with cargo build --release if missing
#   KEEP=DIR        keep the raw outputs, logs and rendered configs in DIR
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
CASES=${CASES:-upstream upstream-tls ward haproxy nginx}
PROTOCOLS=${PROTOCOLS:-h1 h2 h2m10}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
PORT_BASE=${PORT_BASE:-18080}
WARD_BIN=${WARD_BIN:-$REPO_DIR/target/release/ward}
KEEP=${KEEP:-}

export UPSTREAM_PORT=$((PORT_BASE))
export UPSTREAM_H2C_PORT=$((PORT_BASE + 1))
export UPSTREAM_TLS_PORT=$((PORT_BASE + 2))
export WARD_PORT=$((PORT_BASE + 3))
export WARD_ADMIN_PORT=$((PORT_BASE + 4))
export HAPROXY_PORT=$((PORT_BASE + 5))
export NGINX_PORT=$((PORT_BASE + 6))

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

has_case() { [[ " $CASES " == *" $1 "* ]]; }

# ---------------------------------------------------------------- tools

ensure_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v nginx >/dev/null || missing+=(nginx-light)
    if has_case haproxy && ! command -v haproxy >/dev/null; then missing+=(haproxy); fi
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    command -v envsubst >/dev/null || missing+=(gettext-base)
    command -v taskset >/dev/null || missing+=(util-linux)
    ((${#missing[@]} == 0)) && return
    [[ $(id -u) == 0 ]] || die "missing packages: ${missing[*]} (run as root, or apt-get install them)"
    log "installing ${missing[*]}"
    # Installing nginx or haproxy must not start the system services.
    local own_policy_rc=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy_rc=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -n $own_policy_rc ]]; then rm -f /usr/sbin/policy-rc.d; fi
}

ensure_ward() {
    has_case ward || return 0
    if [[ ! -x $WARD_BIN ]]; then
        log "no ward binary at $WARD_BIN: cargo build --release"
        (cd "$REPO_DIR" && cargo build --release --quiet)
        [[ -x $WARD_BIN ]] || die "cargo build did not produce $WARD_BIN"
    fi
}

# ---------------------------------------------------------------- processes

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ward-bench.XXXXXX")
export RUN_DIR
declare -A PIDS=() # servers we started, by name
LOAD_PID=          # the load generator running now, if any

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local status=$? name pid i
    trap - EXIT INT TERM
    if [[ -n $LOAD_PID ]]; then
        kill "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
    fi
    for name in "${!PIDS[@]}"; do
        pid=${PIDS[$name]}
        kill "$pid" 2>/dev/null || true
    done
    for name in "${!PIDS[@]}"; do
        pid=${PIDS[$name]}
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $KEEP ]]; then
        mkdir -p "$KEEP"
        cp -r "$RUN_DIR"/. "$KEEP"/
        rm -f "$KEEP"/tls/key.pem "$KEEP"/tls/bundle.pem
        log "raw outputs kept in $KEEP"
    fi
    rm -rf "$RUN_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'log "error: line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: run CMD on the servers' core, output to RUN_DIR/NAME.out.
start() {
    local name=$1
    shift
    # Appending, so that truncate_logs can empty the file under the server.
    taskset -c "$PROXY_CPU" "$@" >>"$RUN_DIR/$name.out" 2>&1 &
    PIDS[$name]=$!
}

# wait_port NAME PORT: up to 15 s for NAME to accept on PORT.
wait_port() {
    local name=$1 port=$2 i
    for ((i = 0; i < 150; i++)); do
        kill -0 "${PIDS[$name]}" 2>/dev/null || {
            cat "$RUN_DIR/$name.out" >&2
            die "$name exited at start"
        }
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
        sleep 0.1
    done
    die "$name does not listen on 127.0.0.1:$port after 15 s"
}

# wait_ready: up to 15 s for ward's admin /readyz to answer 200 (policy loaded,
# upstream reachable); only a warning after that, the load will tell.
wait_ready() {
    local i
    for ((i = 0; i < 150; i++)); do
        if [[ $(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WARD_ADMIN_PORT/readyz" || true) == 200 ]]; then
            return
        fi
        sleep 0.1
    done
    log "warning: ward's /readyz on 127.0.0.1:$WARD_ADMIN_PORT did not answer 200 within 15 s"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pids_of NAME: the process and its children (nginx's worker).
pids_of() {
    local pid=${PIDS[$1]}
    printf '%s\n' "$pid"
    cat "/proc/$pid/task/"*/children 2>/dev/null | tr ' ' '\n' | grep . || true
}

# cpu_ticks NAME: user + system clock ticks of NAME's processes so far.
cpu_ticks() {
    local pid total=0 stat rest f
    for pid in $(pids_of "$1"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) }   # fields after "pid (comm) "
        # rest starts at field 3 (state); utime and stime are fields 14 and 15.
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

render() { # render TEMPLATE OUT: envsubst with our names only
    # shellcheck disable=SC2016 # the names are for envsubst, not for the shell
    envsubst '${NGINX_USER} ${RUN_DIR} ${CERT} ${KEY} ${CERT_BUNDLE} ${UPSTREAM_PORT} ${UPSTREAM_H2C_PORT} ${UPSTREAM_TLS_PORT} ${HAPROXY_PORT} ${NGINX_PORT}' <"$1" >"$2"
}

start_servers() {
    # Certificates and ward's policy live in their own directories, as in a pod (Secret and ConfigMap
    # mounts): ward watches both, and the servers' logs in RUN_DIR must not wake its watchers.
    mkdir -p "$RUN_DIR/tls" "$RUN_DIR/policy"
    export CERT=$RUN_DIR/tls/cert.pem KEY=$RUN_DIR/tls/key.pem CERT_BUNDLE=$RUN_DIR/tls/bundle.pem
    NGINX_USER=$(id -un)
    export NGINX_USER
    # A throwaway certificate for this run only; the key never leaves RUN_DIR.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$KEY" -out "$CERT" -days 1 -subj /CN=localhost \
        -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost' 2>/dev/null
    cat "$CERT" "$KEY" >"$CERT_BUNDLE"

    local port
    for port in $(seq "$PORT_BASE" $((PORT_BASE + 6))); do
        port_free "$port" || die "127.0.0.1:$port is in use (set PORT_BASE)"
    done

    render "$BENCH_DIR/upstream-nginx.conf" "$RUN_DIR/upstream-nginx.conf"
    start upstream nginx -p "$RUN_DIR" -c "$RUN_DIR/upstream-nginx.conf"
    wait_port upstream "$UPSTREAM_PORT"

    if has_case haproxy; then
        render "$BENCH_DIR/haproxy.cfg" "$RUN_DIR/haproxy.cfg"
        haproxy -c -q -f "$RUN_DIR/haproxy.cfg" || die "haproxy.cfg does not check"
        start haproxy haproxy -db -f "$RUN_DIR/haproxy.cfg"
        wait_port haproxy "$HAPROXY_PORT"
    fi
    if has_case nginx; then
        render "$BENCH_DIR/nginx.conf" "$RUN_DIR/nginx.conf"
        start nginx nginx -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf"
        wait_port nginx "$NGINX_PORT"
    fi
    if has_case ward; then
        sed "s|url: http://127.0.0.1:[0-9]*|url: http://127.0.0.1:$UPSTREAM_PORT|" \
            "$BENCH_DIR/ward-policy.yaml" >"$RUN_DIR/policy/ward-policy.yaml"
        start ward "$WARD_BIN" proxy \
            --listen "127.0.0.1:$WARD_PORT" --admin-listen "127.0.0.1:$WARD_ADMIN_PORT" \
            --tls-cert "$CERT" --tls-key "$KEY" --policy "$RUN_DIR/policy/ward-policy.yaml" \
            --worker-threads 1
        wait_port ward "$WARD_PORT"
        wait_ready
    fi
}

# ---------------------------------------------------------------- cases

# url CASE PROTO: where the load goes.
url() {
    case $1 in
        upstream) [[ $2 == h1 ]] && echo "http://127.0.0.1:$UPSTREAM_PORT/" || echo "http://127.0.0.1:$UPSTREAM_H2C_PORT/" ;;
        upstream-tls) echo "https://127.0.0.1:$UPSTREAM_TLS_PORT/" ;;
        ward) echo "https://127.0.0.1:$WARD_PORT/" ;;
        haproxy) echo "https://127.0.0.1:$HAPROXY_PORT/" ;;
        nginx) echo "https://127.0.0.1:$NGINX_PORT/" ;;
    esac
}

# server CASE: the process whose CPU time is "the proxy" for CASE.
server() {
    case $1 in
        upstream | upstream-tls) echo upstream ;;
        *) echo "$1" ;;
    esac
}

# Before the load: show what each case answers, and check that the policy is
# really the same (headers, Server, body limit on Content-Length and chunked).
check_equivalence() {
    local c u headers h missing big cl chunked
    big=$RUN_DIR/body-2MiB
    head -c $((2 * 1024 * 1024)) /dev/zero >"$big"
    printf '\nWhat each case answers (2 MiB bodies expect 413 from the proxies):\n'
    printf '%-13s %-6s %-36s %-16s %-10s %-13s %s\n' case alpn tls missing-headers server length-2MiB chunked-2MiB
    for c in $CASES; do
        u=$(url "$c" h1)
        headers=$(curl -sk --http1.1 --max-time 5 -o /dev/null -D - "$u" | tr -d '\r')
        missing=""
        for h in strict-transport-security x-content-type-options x-frame-options \
            referrer-policy content-security-policy cache-control; do
            grep -qi "^$h:" <<<"$headers" || missing+="$h "
        done
        [[ $c == upstream* ]] && missing="(no policy)"
        local srv alpn tls
        srv=$(grep -i '^server:' <<<"$headers" | cut -d' ' -f2- || true)
        alpn=-
        tls=plain
        if [[ $u == https* ]]; then
            local hs hostport=${u#https://}
            hs=$(timeout 5 openssl s_client -connect "${hostport%/}" -alpn h2,http/1.1 </dev/null 2>&1 | tr -d '\r\0' || true)
            tls=$(sed -n 's/^New, \([^,]*\), Cipher is \(.*\)/\1 \2/p' <<<"$hs" | head -1)
            alpn=$(sed -n 's/^ALPN protocol: //p' <<<"$hs" | head -1)
        fi
        cl=$(curl -sk --http1.1 --max-time 10 -o /dev/null -w '%{http_code}' --data-binary "@$big" "${u%/}/upload" || true)
        chunked=$(curl -sk --http1.1 --max-time 10 -o /dev/null -w '%{http_code}' -H 'Transfer-Encoding: chunked' \
            --data-binary "@$big" "${u%/}/upload" || true)
        printf '%-13s %-6s %-36s %-16s %-10s %-13s %s\n' "$c" "${alpn:--}" "${tls:--}" "${missing:-none}" \
            "${srv:-(none)}" "$cl" "$chunked"
    done
    rm -f "$big"
}

# latency_ms VALUE: wrk's "523.00us" / "1.23ms" / "1.02s" in milliseconds.
latency_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

# bounded SECONDS OUT CMD...: run CMD on the load generator's core for at most
# SECONDS, output to OUT, and its CPU seconds to OUT.cpu. In the background, so
# that a signal reaches our trap at once and the cleanup can stop it.
bounded() {
    local secs=$1 out=$2 status=0
    shift 2
    # The shell's "children" times grow by what each reaped child used,
    # grandchildren included: here, the load generator.
    times >"$out.t0"
    timeout "$secs" taskset -c "$LOAD_CPU" "$@" >"$out" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || status=$?
    LOAD_PID=
    times >"$out.t1"
    awk 'function sec(t) { split(t, a, "m"); return a[1] * 60 + a[2] }
        FNR == 2 { c[FILENAME] = sec($1) + sec($2) }
        END { printf "%.3f\n", c[ARGV[2]] - c[ARGV[1]] }' "$out.t0" "$out.t1" >"$out.cpu"
    rm -f "$out.t0" "$out.t1"
    return "$status"
}

# load PROTO URL SECONDS OUT: one load run; writes "requests rps p50_ms p99_ms
# errors" to OUT.result.
load() {
    local proto=$1 u=$2 secs=$3 out=$4 streams=1
    case $proto in
        h1)
            bounded $((secs + 30)) "$out" \
                wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --timeout 5s --latency "$u" ||
                die "wrk failed: $(tail -3 "$out")"
            local req rps p50 p99 err
            req=$(awk '/requests in/ {print $1}' "$out")
            rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
            p50=$(latency_ms "$(awk '$1 == "50%" {print $2}' "$out")")
            p99=$(latency_ms "$(awk '$1 == "99%" {print $2}' "$out")")
            err=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/[^0-9 ]/, " "); n += $1 + $2 + $3 + $4} END {print n + 0}' "$out")
            echo "$req $rps $p50 $p99 $err" >"$out.result"
            ;;
        h2 | h2m*)
            [[ $proto == h2m* ]] && streams=${proto#h2m}
            bounded $((secs + 30)) "$out" \
                h2load -t1 -c"$CONNECTIONS" -m"$streams" -D "$secs" --log-file="$out.log" "$u" ||
                die "h2load failed: $(tail -3 "$out")"
            grep -q '^Application protocol: h2' "$out" ||
                die "h2load did not speak h2 to $u: $(grep -i 'protocol' "$out")"
            local req rps err p50 p99
            req=$(awk '/^requests:/ {print $8}' "$out")
            rps=$(awk '/^finished in/ {print $4}' "$out")
            err=$(awk '/^requests:/ {n += $10 + $12 + $14} /^status codes:/ {n += $5 + $7 + $9} END {print n + 0}' "$out")
            read -r p50 p99 < <(cut -f3 "$out.log" | sort -n | awk '{a[NR] = $1}
                END { if (NR == 0) { print "0 0"; exit }
                      i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
                      i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
                      printf "%.3f %.3f\n", a[i50] / 1000, a[i99] / 1000 }')
            rm -f "$out.log"
            echo "$req $rps $p50 $p99 $err" >"$out.result"
            ;;
        *) die "unknown protocol $proto" ;;
    esac
}

# truncate_logs: empty the request logs (ward's and HAProxy's stdout, nginx's
# access log) between runs, so that a long run does not fill the disk. The
# servers write them in append mode, so they go on at the new end.
truncate_logs() {
    local f
    for f in ward.out haproxy.out nginx-access.log; do
        if [[ -f $RUN_DIR/$f ]]; then : >"$RUN_DIR/$f"; fi
    done
}

# measure ROUND CASE PROTO: warm up, run, append one line to results.tsv.
measure() {
    local round=$1 c=$2 proto=$3 u srv hz before up_before after up_after
    u=$(url "$c" "$proto")
    srv=$(server "$c")
    hz=$(getconf CLK_TCK)
    if ((WARMUP > 0)); then load "$proto" "$u" "$WARMUP" "$RUN_DIR/warmup.out"; fi
    before=$(cpu_ticks "$srv")
    up_before=$(cpu_ticks upstream)
    local out=$RUN_DIR/r$round-$c-$proto.out req rps p50 p99 err
    load "$proto" "$u" "$DURATION" "$out"
    read -r req rps p50 p99 err <"$out.result"
    after=$(cpu_ticks "$srv")
    up_after=$(cpu_ticks upstream)
    local cpu up_cpu
    cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$req" 'BEGIN {printf "%.2f", n ? t / hz * 1e6 / n : 0}')
    up_cpu=$(awk -v t=$((up_after - up_before)) -v hz="$hz" -v n="$req" 'BEGIN {printf "%.2f", n ? t / hz * 1e6 / n : 0}')
    # How busy each core was: near 100 % for the servers means the proxy is
    # the bottleneck, as intended; near 100 % for the generator means it is not.
    local busy=$((after - before + up_after - up_before)) srv_pct gen_pct
    [[ $srv == upstream ]] && busy=$((after - before)) && up_cpu=-
    srv_pct=$(awk -v t="$busy" -v hz="$hz" -v d="$DURATION" 'BEGIN {printf "%.0f", t / hz / d * 100}')
    gen_pct=$(awk -v t="$(cat "$out.cpu")" -v d="$DURATION" 'BEGIN {printf "%.0f", t / d * 100}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$proto" "$rps" "$p50" "$p99" \
        "$cpu" "$up_cpu" "$err" "$srv_pct" "$gen_pct" >>"$RUN_DIR/results.tsv"
    truncate_logs
    log "round $round  $(printf '%-12s %-6s %8.0f req/s  p50 %7.3f ms  p99 %7.3f ms  %6s + %6s us/req  cores %3s%% %3s%%  %s errors' \
        "$c" "$proto" "$rps" "$p50" "$p99" "$cpu" "$up_cpu" "$srv_pct" "$gen_pct" "$err")"
}

median() {
    sort -g | awk '{a[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# column CASE PROTO N: the medians of column N over the rounds.
column() {
    awk -F'\t' -v c="$1" -v p="$2" -v n="$3" '$2 == c && $3 == p {print $n}' "$RUN_DIR/results.tsv" | median
}

report() {
    local proto c rps p50 p99 cpu up err hrps hp99 hcpu srv_pct gen_pct
    printf '\nMedian of %s rounds, %s s each, %s connections; load on core %s, servers on core %s.\n' \
        "$ROUNDS" "$DURATION" "$CONNECTIONS" "$LOAD_CPU" "$PROXY_CPU"
    printf 'CPU: user+system time of the proxy process (nginx: master and worker) per request;\n'
    printf 'upstr_us/r: the same for the upstream nginx behind a proxy. srv%%: how busy the servers core was\n'
    printf '(proxy + upstream); gen%%: how busy the load generator was. Ratios are x/haproxy.\n\n'
    printf '%-13s %-6s %8s %8s %8s %10s %10s %5s %5s %6s %7s %7s %7s\n' \
        case proto req/s p50_ms p99_ms cpu_us/req upstr_us/r srv% gen% errors rps/hap p99/hap cpu/hap
    for proto in $PROTOCOLS; do
        hrps=$(column haproxy "$proto" 4)
        hp99=$(column haproxy "$proto" 6)
        hcpu=$(column haproxy "$proto" 7)
        for c in $CASES; do
            rps=$(column "$c" "$proto" 4)
            p50=$(column "$c" "$proto" 5)
            p99=$(column "$c" "$proto" 6)
            cpu=$(column "$c" "$proto" 7)
            up=$(column "$c" "$proto" 8)
            [[ $up == nan ]] && up=-
            srv_pct=$(column "$c" "$proto" 10)
            gen_pct=$(column "$c" "$proto" 11)
            err=$(awk -F'\t' -v c="$c" -v p="$proto" '$2 == c && $3 == p {n += $9} END {print n + 0}' "$RUN_DIR/results.tsv")
            awk -v c="$c" -v p="$proto" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v cpu="$cpu" -v up="$up" \
                -v err="$err" -v hrps="$hrps" -v hp99="$hp99" -v hcpu="$hcpu" -v sp="$srv_pct" -v gp="$gen_pct" \
                'function ratio(a, b) { return (b == "nan" || b + 0 == 0 || a == "nan") ? "-" : sprintf("%.2f", a / b) }
                BEGIN { printf "%-13s %-6s %8.0f %8.3f %8.3f %10s %10s %5.0f %5.0f %6d %7s %7s %7s\n",
                    c, p, rps, p50, p99, cpu, up, sp, gp, err, ratio(rps, hrps), ratio(p99, hp99), ratio(cpu, hcpu) }'
        done
    done
}

machine() {
    printf 'machine: %s, %s cores, %s, load average %s\n' \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(nproc)" "$(uname -sr)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'tools: %s; %s; %s; %s; %s\n' \
        "$({ wrk -v 2>&1 || true; } | head -1 | cut -d' ' -f1-2)" "$(h2load --version 2>&1 | head -1)" \
        "$(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3)" "$(nginx -v 2>&1)" "$(openssl version)"
    if has_case ward; then printf 'ward: %s\n' "$("$WARD_BIN" --version 2>&1 | head -1)"; fi
    # Our own servers are idle now: a load above half a core is someone else.
    if awk '{exit !($1 > 0.5)}' /proc/loadavg; then
        log "warning: the machine is busy (load $(cut -d' ' -f1 /proc/loadavg)): expect noisy figures"
    fi
}

main() {
    ((ROUNDS > 0 && DURATION > 0)) || die "ROUNDS and DURATION must be positive"
    ensure_tools
    ensure_ward
    start_servers
    machine
    check_equivalence
    local round i n proto c
    local -a order
    read -r -a order <<<"$CASES"
    n=${#order[@]}
    : >"$RUN_DIR/results.tsv"
    log "start: $ROUNDS rounds x ${PROTOCOLS// /,} x $n cases x (${WARMUP}+${DURATION}) s"
    for ((round = 1; round <= ROUNDS; round++)); do
        for proto in $PROTOCOLS; do
            # Rotate the order each round so no case always follows the same one.
            for ((i = 0; i < n; i++)); do
                c=${order[$(((i + round - 1) % n))]}
                measure "$round" "$c" "$proto"
            done
        done
    done
    report
}

# "; exit" on the same line: bash never reads past it, even if the file is
# edited during a run.
main "$@"; exit
