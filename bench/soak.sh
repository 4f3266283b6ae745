#!/usr/bin/env bash
# Soak: steady load on a release `ward proxy` while its policy is reloaded 1,000 times and its
# certificate swapped 20 times (issue 8, item 4). Reports failed requests (aim: 0) and the p99
# before and during the churn (aim: no visible step). Loopback only; every loop ends by a
# deadline; nothing is left running (bench/lib.sh's cleanup).
#
# Load (on the load core, LOAD_CPU; ward and the upstream nginx share PROXY_CPU, as in
# bench/proxy.sh):
#   - h2load over HTTP/2, CONNECTIONS keep-alive connections each sending RPS requests per
#     second (an open, steady rate: not a saturating closed loop), every request logged;
#   - a probe: one curl at a time over HTTP/1.1, each on a NEW connection (a new TLS handshake,
#     so certificate swaps are on its path), counting any answer other than 200.
# Phases: BEFORE seconds of load alone, then DURING seconds of the same load while the churn
# runs: RELOADS policy rewrites (the rate limit's value changes, so each is a real new policy)
# each followed by SIGHUP, spread evenly, and SWAPS certificate swaps (a new key and certificate,
# written cert-manager style: key first, then certificate, each renamed into place).
#
# Usage: bench/soak.sh   (about 3.5 minutes; take the build lock on a shared machine:
#                         flock /tmp/ward-cargo.lock bench/soak.sh, with a built binary)
# Settings, from the environment (and those of bench/lib.sh):
#   BEFORE=60 DURING=120   seconds of each phase
#   RELOADS=1000 SWAPS=20  churn during the second phase
#   CONNECTIONS=16 RPS=50  h2load connections and requests per second per connection
#   RESULTS=bench/results/soak.txt   where the report is also written; empty: nowhere
set -Eeuo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BEFORE=${BEFORE:-60}
DURING=${DURING:-120}
RELOADS=${RELOADS:-1000}
SWAPS=${SWAPS:-20}
CONNECTIONS=${CONNECTIONS:-16}
RPS=${RPS:-50}
RESULTS=${RESULTS-$BENCH_DIR/results/soak.txt}
CASES=ward

check_cases
ensure_tools h2load:nghttp2-client
ensure_ward
start_servers

WARD_PID=${PIDS[ward]}
POLICY=$RUN_DIR/policy-ward/ward-policy.yaml
URL=$(url ward h2)
ADMIN=http://127.0.0.1:$(admin_port ward)

# steady_load SECONDS OUT: h2load at the steady rate; the per-request log in OUT.log.
steady_load() {
    bounded $(($1 + 30)) "$2" h2load -t1 -c"$CONNECTIONS" -m1 --rps="$RPS" -D "$1" \
        --log-file="$2.log" "$URL" || die "h2load failed: $(tail -3 "$2")"
    grep -q '^Application protocol: h2' "$2" || die "h2load did not speak h2: $(grep -i protocol "$2")"
}

# probe SECONDS OUT: new-connection requests one after another until the deadline; each line
# of OUT is a status (000: no answer).
probe() {
    local end=$((SECONDS + $1))
    while ((SECONDS < end)); do
        curl -sk --http1.1 --max-time 5 -o /dev/null -w '%{http_code}\n' "$URL" >>"$2" || true
        sleep 0.05
    done
}

# churn SECONDS: RELOADS policy reloads and SWAPS certificate swaps spread over SECONDS.
churn() {
    local secs=$1 i swaps=0 end=$((SECONDS + $1 + 30)) start_us=${EPOCHREALTIME/./}
    local step_us=$((secs * 1000000 / RELOADS)) every=$((RELOADS / SWAPS))
    for ((i = 1; i <= RELOADS && SECONDS < end; i++)); do
        # A real change: the never-triggering per-IP limit takes another value.
        sed "s/^      limit: [0-9]*$/      limit: $((100000000 + i))/" "$POLICY" >"$POLICY.tmp"
        mv "$POLICY.tmp" "$POLICY"
        kill -HUP "$WARD_PID"
        if ((i % every == 0 && swaps < SWAPS)); then
            swaps=$((swaps + 1))
            swap_cert "$swaps"
        fi
        # Keep to the schedule: sleep until this step's slot ends.
        local left_us=$((start_us + i * step_us - ${EPOCHREALTIME/./}))
        if ((left_us > 0)); then sleep "$((left_us / 1000000)).$(printf '%06d' $((left_us % 1000000)))"; fi
    done
    echo "$((i - 1)) $swaps" >"$RUN_DIR/churn.done"
}

# swap_cert N: a new key and certificate, key first then certificate, each renamed into place.
swap_cert() {
    local dir=$RUN_DIR/tls
    taskset -c "$LOAD_CPU" openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/key.new" -out "$dir/cert.new" -days 1 -subj "/CN=localhost swap $1" \
        -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost' 2>/dev/null
    mv "$dir/key.new" "$KEY"
    mv "$dir/cert.new" "$CERT"
}

# percentiles LOG: p50 and p99 (ms) of an h2load per-request log (microseconds in column 3).
percentiles() {
    cut -f3 "$1" | sort -n | awk '{a[NR] = $1}
        END { if (NR == 0) { print "0 0"; exit }
              i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
              i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
              printf "%.2f %.2f\n", a[i50] / 1000, a[i99] / 1000 }'
}

# report PHASE OUT: one table row for a phase.
report() {
    local out=$2 req failed non2xx p50 p99 probes probe_failed
    req=$(awk '/^requests:/ {print $2}' "$out")
    failed=$(awk '/^requests:/ {print $10 + $12 + $14}' "$out")
    non2xx=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$out")
    read -r p50 p99 < <(percentiles "$out.log")
    probes=$(wc -l <"$out.probe")
    probe_failed=$(grep -vc '^200$' "$out.probe" || true)
    printf '%-8s %9s %8s %8s %8s %8s %10s %13s\n' "$1" "$req" "$failed" "$non2xx" "$p50" "$p99" "$probes" "$probe_failed"
}

metric() { curl -s --max-time 2 "$ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 {n += $NF} END {print n + 0}'; }

log "soak: ${BEFORE}s steady load, then ${DURING}s with $RELOADS policy reloads and $SWAPS certificate swaps"
log "load: h2load -c$CONNECTIONS --rps=$RPS ($((CONNECTIONS * RPS)) req/s over HTTP/2) plus a new-connection HTTP/1.1 probe"
reloads0=$(metric 'ward_policy_reloads_total{result="changed"}')

log "phase 1: load alone"
probe "$BEFORE" "$RUN_DIR/before.probe" &
probe_pid=$!
steady_load "$BEFORE" "$RUN_DIR/before"
wait "$probe_pid"

log "phase 2: load with reloads and swaps"
probe "$DURING" "$RUN_DIR/during.probe" &
probe_pid=$!
churn "$DURING" &
churn_pid=$!
steady_load "$DURING" "$RUN_DIR/during"
wait "$probe_pid"
wait "$churn_pid"

read -r sent swapped <"$RUN_DIR/churn.done"
# The last reload and swap land within a second (SIGHUP is immediate; the certificate watch
# debounces 200 ms).
sleep 1
reloads=$(($(metric 'ward_policy_reloads_total{result="changed"}') - reloads0))
reload_errors=$(metric 'ward_policy_reloads_total{result="error"}')
cert_changed=$(metric 'ward_cert_reloads_total{result="changed"}')
cert_errors=$(metric 'ward_cert_reloads_total{result="error"}')
served=$(timeout 5 openssl s_client -connect "127.0.0.1:${CASE_PORT[ward]}" </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 2>/dev/null || true)
written=$(openssl x509 -in "$CERT" -noout -fingerprint -sha256)
[[ $served == "$written" ]] && last=yes || last=no

{
    printf '\nward soak (%s, %s): %s s before, %s s during; h2load -c%s --rps=%s (%s req/s, HTTP/2)\n' \
        "$(date -u +%Y-%m-%d)" "$("$WARD_BIN" --version 2>/dev/null || echo ward)" "$BEFORE" "$DURING" \
        "$CONNECTIONS" "$RPS" "$((CONNECTIONS * RPS))"
    printf '%-8s %9s %8s %8s %8s %8s %10s %13s\n' phase requests failed non-2xx p50_ms p99_ms probes probe_failed
    report before "$RUN_DIR/before"
    report during "$RUN_DIR/during"
    printf '\nchurn: %s policy rewrites + SIGHUP sent, %s reloads applied (ward_policy_reloads_total{result="changed"}), %s reload errors\n' \
        "$sent" "$reloads" "$reload_errors"
    printf '       %s certificate swaps written, %s certificate reloads (%s errors), last certificate served: %s\n' \
        "$swapped" "$cert_changed" "$cert_errors" "$last"
} | tee "${RESULTS:-/dev/null}"
