# shellcheck shell=bash
# The harness shared by bench/proxy.sh (throughput), bench/cost.sh (instructions per request),
# bench/idle.sh (memory per idle connection) and bench/profile.sh (CPU profile): the cases, their
# servers and configurations, ports, the throwaway certificate and JWT material, and the cleanup.
# Sourced, not run. The caller sets CASES (and may set WRAP, MAXCONN, WARD_POLICY_EXTRA) before
# calling start_servers.
#
# Cases (each is its own server process, so that CPU time and memory are per case):
#   upstream              the upstream nginx directly, plain HTTP (h1; h2 as cleartext h2c)
#   upstream-tls          the same nginx answering itself over TLS
#   ward                  ward proxy with bench/ward-policy.yaml
#   ward-bearer           ward with bench/ward-policy.yaml (no JWT stage) loaded with the hot token
#                         of ward-jwt: the same bytes on the wire, forwarded unverified, so
#                         ward-jwt against it is what verification itself costs
#   ward-jwt              the same plus JWT verification (an ES256 issuer with a JWKS file; the
#                         route requires auth), loaded with one hot token
#   ward-jwt10k           the same, loaded with TOKENS (10,000) distinct valid tokens
#   ward-jwt10k-nocache   the same with identity.cache.max_entries: 0 (a signature check per request)
#   ward-jwt-rev          ward-jwt plus the revocation check of every verified token (sessions.revocation,
#                         the in-process copy; issue 7), loaded with the hot token
#   ward-redis            ward-policy.yaml with the per-IP limit kept in Redis (REDIS_URL, or the
#                         harness's own redis-server on the load generator's core)
#   haproxy               HAProxy with bench/haproxy.cfg
#   haproxy-jwt           the same plus jwt_verify ES256 and the claim checks HAProxy can express,
#                         loaded with the hot token
#   haproxy-jwt10k        the same, loaded with the TOKENS distinct tokens
#   nginx                 nginx with bench/nginx.conf (nginx open source has no JWT module)
#
# Settings, from the environment (besides the caller's own):
#   LOAD_CPU=0 PROXY_CPU=1    cores for the load generator and for the servers
#   PORT_BASE=18080           ports PORT_BASE..PORT_BASE+20 on 127.0.0.1 (+40 with WARD_BIN_B;
#                             PORT_BASE+41: the harness's own Redis)
#   WARD_BIN=target/release/ward   built (under flock /tmp/ward-cargo.lock) if missing
#   WARD_BIN_B=PATH another ward binary (a before/after comparison in one interleaved run): every
#                   ward case X then also exists as X-b, the same case served by WARD_BIN_B
#   REDIS_URL=      for ward-redis. Empty (the default): the harness starts its own redis-server
#                   (nothing kept on disk) on 127.0.0.1:PORT_BASE+41, pinned to REDIS_CPU, and
#                   stops it at exit. A URL (redis://127.0.0.1:6379): that Redis as it is, where
#                   the scheduler puts it; its keys get a random prefix, deleted at exit
#   REDIS_CPU=LOAD_CPU   the cores of the harness's own Redis (a taskset list): the load generator's,
#                   so that Redis never takes the proxy's core from it (as a Redis on another host
#                   would not): left to the scheduler, it ran on the servers' core in bursts and
#                   added up to 0.4 ms to ward-redis's p99 that ward did not spend. REDIS_CPU=0,1
#                   leaves it to the scheduler, which serves one connection better: the same core
#                   wakes Redis sooner than a sleeping one (bench/README.md, "Cores")
#   TOKENS=10000    distinct tokens for the *-jwt10k cases
#   KEEP=DIR        keep the raw outputs, logs, rendered configs and tokens in DIR (never a
#                   private key: the TLS key is removed, the JWT key never touches the disk)

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")

LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
PORT_BASE=${PORT_BASE:-18080}
WARD_BIN=${WARD_BIN:-$REPO_DIR/target/release/ward}
WARD_BIN_B=${WARD_BIN_B:-}
KEEP=${KEEP:-}
REDIS_URL=${REDIS_URL:-}
REDIS_CPU=${REDIS_CPU:-$LOAD_CPU}
OWN_REDIS_PORT=$((PORT_BASE + 41))
TOKENS=${TOKENS:-10000}
# HAProxy's maxconn and nginx's worker_connections (idle.sh raises them).
export MAXCONN=${MAXCONN:-4096}
export NGINX_MAXCONN=${NGINX_MAXCONN:-$MAXCONN}
# nginx as a single process (cost.sh).
NGINX_SINGLE_PROCESS=${NGINX_SINGLE_PROCESS:-}
# Extra top-level YAML appended to every ward policy (idle.sh sets server limits with it).
WARD_POLICY_EXTRA=${WARD_POLICY_EXTRA:-}
# A command prefix for the servers of the cases (cost.sh runs them under valgrind); never for
# the upstream. Set by the caller after sourcing. Each server has BENCH_CASE=<case> in its
# environment (valgrind's %q{BENCH_CASE} names its output after it).
WRAP=()

ALL_CASES="upstream upstream-tls ward ward-bearer ward-jwt ward-jwt10k ward-jwt10k-nocache ward-jwt-rev ward-redis haproxy haproxy-jwt haproxy-jwt10k nginx"

# The JWT issuer of the JWT cases (bench/jwt.py signs for it).
export JWT_ISSUER=https://issuer.bench.test JWT_AUDIENCE=ward-bench

export UPSTREAM_PORT=$((PORT_BASE))
export UPSTREAM_H2C_PORT=$((PORT_BASE + 1))
export UPSTREAM_TLS_PORT=$((PORT_BASE + 2))
export HAPROXY_PORT=$((PORT_BASE + 5)) NGINX_PORT=$((PORT_BASE + 6))
# Each case's TLS port; a ward case's admin port is the next one.
declare -A CASE_PORT=(
    [upstream-tls]=$((PORT_BASE + 2))
    [ward]=$((PORT_BASE + 3))
    [haproxy]=$((PORT_BASE + 5))
    [nginx]=$((PORT_BASE + 6))
    [haproxy-jwt]=$((PORT_BASE + 7))
    [haproxy-jwt10k]=$((PORT_BASE + 8))
    [ward-jwt]=$((PORT_BASE + 9))
    [ward-jwt10k]=$((PORT_BASE + 11))
    [ward-jwt10k-nocache]=$((PORT_BASE + 13))
    [ward-redis]=$((PORT_BASE + 15))
    [ward-jwt-rev]=$((PORT_BASE + 17))
    [ward-bearer]=$((PORT_BASE + 19))
)
# The -b cases (WARD_BIN_B): their ward case's ports plus 20.
if [[ -n $WARD_BIN_B ]]; then
    for c in $ALL_CASES; do
        if [[ $c == ward* ]]; then
            CASE_PORT[$c-b]=$((CASE_PORT[$c] + 20))
            ALL_CASES+=" $c-b"
        fi
    done
fi
# base_case CASE: the case a -b case repeats with WARD_BIN_B (any other case: itself).
base_case() { echo "${1%-b}"; }

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

has_case() { [[ " $CASES " == *" $1 "* ]]; }
is_ward() { [[ $1 == ward* ]]; }
uses_redis() { [[ $(base_case "$1") == ward-redis ]]; }
is_haproxy() { [[ $1 == haproxy* ]]; }
is_jwt() { [[ $1 == *-jwt* ]]; }
many_tokens() { [[ $1 == *-jwt10k* ]]; }
# sends_token CASE: the load carries a bearer token (the JWT cases, and ward-bearer unverified).
sends_token() { is_jwt "$1" || [[ $(base_case "$1") == ward-bearer ]]; }
any_case() { # any_case PREDICATE: true if some case in CASES satisfies it
    local c
    for c in $CASES; do "$1" "$c" && return 0; done
    return 1
}
check_cases() {
    local c
    for c in $CASES; do
        [[ " $ALL_CASES " == *" $c "* ]] || die "unknown case $c (cases: $ALL_CASES)"
    done
}
admin_port() { echo $((CASE_PORT[$1] + 1)); }

# ---------------------------------------------------------------- tools

# A python3 that has the cryptography package (bench/jwt.py), or nothing.
find_python() {
    local p
    for p in python3 /usr/bin/python3; do
        if command -v "$p" >/dev/null && "$p" -c 'import cryptography' 2>/dev/null; then
            command -v "$p"
            return
        fi
    done
}

# ensure_tools [COMMAND:PACKAGE...]: install from Debian's packages what the cases (and the
# caller's extra commands) need and is missing; only as root.
ensure_tools() {
    local missing=() pair
    command -v nginx >/dev/null || missing+=(nginx-light)
    if any_case is_haproxy && ! command -v haproxy >/dev/null; then missing+=(haproxy); fi
    if any_case uses_redis && ! command -v redis-cli >/dev/null; then missing+=(redis-tools); fi
    if any_case uses_redis && [[ -z $REDIS_URL ]] && ! command -v redis-server >/dev/null; then missing+=(redis-server); fi
    if any_case sends_token && [[ -z $(find_python) ]]; then missing+=(python3-cryptography); fi
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    command -v envsubst >/dev/null || missing+=(gettext-base)
    command -v taskset >/dev/null || missing+=(util-linux)
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if ((${#missing[@]} > 0)); then
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
    fi
    PYTHON=$(find_python)
    if any_case sends_token && [[ -z $PYTHON ]]; then die "no python3 with the cryptography package"; fi
}

ensure_ward() {
    any_case is_ward || return 0
    if [[ ! -x $WARD_BIN ]]; then
        # Other engineers' builds share the two cores: take the build lock (do not run this script
        # under that lock yourself without a binary, or it waits for itself).
        log "no ward binary at $WARD_BIN: cargo build --release (under flock /tmp/ward-cargo.lock)"
        (cd "$REPO_DIR" && flock /tmp/ward-cargo.lock cargo build --release --quiet)
        [[ -x $WARD_BIN ]] || die "cargo build did not produce $WARD_BIN"
    fi
    if [[ -n $WARD_BIN_B && ! -x $WARD_BIN_B ]]; then die "WARD_BIN_B=$WARD_BIN_B is not an executable"; fi
}

# ---------------------------------------------------------------- processes

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ward-bench.XXXXXX")
export RUN_DIR
declare -A PIDS=() # servers we started, by name
LOAD_PID=          # the load generator running now, if any
REDIS_PREFIX=bench-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')

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
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if any_case uses_redis && [[ -z ${PIDS[redis]:-} && -n $REDIS_URL ]] && command -v redis-cli >/dev/null; then
        # The limiter's keys expire by themselves; delete whatever is left of this run's (the
        # harness's own Redis is gone with its keys).
        timeout 30 redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_PREFIX:*" 2>/dev/null |
            timeout 30 xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    fi
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

# start_redis: the harness's own Redis for ward-redis when REDIS_URL is empty (see the settings),
# on REDIS_CPU; sets REDIS_URL. Stopped with the other servers at exit.
start_redis() {
    any_case uses_redis && [[ -z $REDIS_URL ]] || return 0
    port_free "$OWN_REDIS_PORT" || die "127.0.0.1:$OWN_REDIS_PORT is in use (set PORT_BASE, or REDIS_URL)"
    taskset -c "$REDIS_CPU" redis-server --bind 127.0.0.1 --port "$OWN_REDIS_PORT" --save "" \
        --appendonly no --daemonize no >>"$RUN_DIR/redis.out" 2>&1 &
    PIDS[redis]=$!
    wait_port redis "$OWN_REDIS_PORT"
    REDIS_URL=redis://127.0.0.1:$OWN_REDIS_PORT
}

# redis_placement: where ward-redis's Redis runs, for reports.
redis_placement() {
    if [[ -n ${PIDS[redis]:-} ]]; then echo "the harness's own, on core $REDIS_CPU"; else echo "$REDIS_URL, unpinned"; fi
}

# stop NAME: stop one server we started (TERM, then KILL after 10 s).
stop() {
    local pid=${PIDS[$1]:-} i
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$1]"
}

# wait_port NAME PORT [SECONDS]: up to SECONDS (15) for NAME to accept on PORT.
wait_port() {
    local name=$1 port=$2 secs=${3:-15} i
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "${PIDS[$name]}" 2>/dev/null || {
            cat "$RUN_DIR/$name.out" >&2
            die "$name exited at start"
        }
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
        sleep 0.1
    done
    die "$name does not listen on 127.0.0.1:$port after $secs s"
}

# wait_ready CASE [SECONDS]: up to SECONDS (15) for a ward's admin /readyz to answer 200 (policy
# loaded, upstream reachable); only a warning after that, the load will tell.
wait_ready() {
    local port secs=${2:-15} i
    port=$(admin_port "$1")
    for ((i = 0; i < secs * 10; i++)); do
        if [[ $(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true) == 200 ]]; then
            return
        fi
        sleep 0.1
    done
    log "warning: $1's /readyz on 127.0.0.1:$port did not answer 200 within $secs s"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pids_of NAME: the process and its children (nginx's worker).
pids_of() {
    local pid=${PIDS[$1]}
    printf '%s\n' "$pid"
    cat "/proc/$pid/task/"*/children 2>/dev/null | tr ' ' '\n' | grep . || true
}

# cpu_ticks_pid PID: user + system clock ticks of one process so far.
cpu_ticks_pid() {
    local stat rest f
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return
    }
    rest=${stat##*) } # fields after "pid (comm) "
    # rest starts at field 3 (state); utime and stime are fields 14 and 15.
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

# cpu_ticks NAME: user + system clock ticks of NAME's processes so far.
cpu_ticks() {
    local pid total=0
    for pid in $(pids_of "$1"); do
        total=$((total + $(cpu_ticks_pid "$pid")))
    done
    echo "$total"
}

# rss_kib NAME: resident memory of NAME's processes, KiB.
rss_kib() {
    local pid total=0 kib
    for pid in $(pids_of "$1"); do
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# ward_metric CASE NAME: the sum of a ward's Prometheus samples whose line starts with NAME.
ward_metric() {
    curl -s --max-time 2 "http://127.0.0.1:$(admin_port "$1")/metrics" |
        awk -v n="$2" 'index($0, n) == 1 {s += $NF} END {printf "%.0f\n", s}'
}

# render TEMPLATE OUT [NAME=VALUE...]: envsubst with our names only, VALUEs overriding.
render() {
    local in=$1 out=$2
    shift 2
    # shellcheck disable=SC2016 # the names are for envsubst, not for the shell
    env "$@" envsubst '${NGINX_USER} ${RUN_DIR} ${CERT} ${KEY} ${CERT_BUNDLE} ${UPSTREAM_PORT} ${UPSTREAM_H2C_PORT} ${UPSTREAM_TLS_PORT} ${HAPROXY_PORT} ${NGINX_PORT} ${MAXCONN} ${NGINX_MAXCONN} ${JWT_ISSUER} ${JWT_AUDIENCE} ${JWT_PUBKEY}' <"$in" >"$out"
}

# ---------------------------------------------------------------- material

# make_cert: a throwaway certificate for this run only; the key never leaves RUN_DIR.
make_cert() {
    # Certificates and ward's policies live in their own directories, as in a pod (Secret and
    # ConfigMap mounts): ward watches them, and the servers' logs in RUN_DIR must not wake its
    # watchers.
    mkdir -p "$RUN_DIR/tls"
    export CERT=$RUN_DIR/tls/cert.pem KEY=$RUN_DIR/tls/key.pem CERT_BUNDLE=$RUN_DIR/tls/bundle.pem
    NGINX_USER=$(id -un)
    export NGINX_USER
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$KEY" -out "$CERT" -days 1 -subj /CN=localhost \
        -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost' 2>/dev/null
    cat "$CERT" "$KEY" >"$CERT_BUNDLE"
}

# make_tokens: a new ES256 key in bench/jwt.py's memory only; its JWK Set, public key and
# tokens in RUN_DIR/jwt. Also, for h2load (which sends the same headers on every request), a
# URI file per case carrying the tokens in the query (?access_token=).
make_tokens() {
    any_case sends_token || return 0
    "$PYTHON" "$BENCH_DIR/jwt.py" "$RUN_DIR/jwt" "$TOKENS" || die "bench/jwt.py failed"
    export JWT_PUBKEY=$RUN_DIR/jwt/pubkey.pem
    HOT_TOKEN=$(cat "$RUN_DIR/jwt/token-hot.txt")
    local c
    for c in $CASES; do
        many_tokens "$c" || continue
        # h2load takes scheme, host and port from the first URI only.
        awk -v u="$(url "$c" h2)" 'NR == 1 {print u "?access_token=" $0; next} {print "/?access_token=" $0}' \
            "$RUN_DIR/jwt/tokens.txt" >"$RUN_DIR/jwt/uris-$c.txt"
    done
}

# token_of CASE: the token a single check request of CASE carries.
token_of() {
    if many_tokens "$1"; then head -1 "$RUN_DIR/jwt/tokens.txt"; else echo "$HOT_TOKEN"; fi
}

# ward_policy CASE [DIR_CASE]: write CASE's policy into DIR_CASE's (default: CASE's) own
# directory (a -b case gets its base case's policy, never the file another ward watches); print
# its path.
ward_policy() {
    local c=$1 dir=$RUN_DIR/policy-${2:-$1}
    mkdir -p "$dir"
    local p=$dir/ward-policy.yaml
    sed "s|url: http://127.0.0.1:[0-9]*|url: http://127.0.0.1:$UPSTREAM_PORT|" "$BENCH_DIR/ward-policy.yaml" >"$p"
    if is_jwt "$c"; then
        # ward-policy.yaml plus: the route requires a token of the bench issuer (in the
        # Authorization header, or in the query for h2load), and the issuer with its JWKS file.
        cp "$RUN_DIR/jwt/jwks.json" "$dir/jwks.json"
        local entries=100000
        [[ $c == *-nocache ]] && entries=0
        awk '{print} /^defaults:/ {print "  auth: { require: required, issuers: [bench], token_in_query: true }"}' \
            "$p" >"$p.new" && mv "$p.new" "$p"
        cat >>"$p" <<EOF
identity:
  issuers:
    - name: bench
      issuer: $JWT_ISSUER
      audiences: [$JWT_AUDIENCE]
      algorithms: [ES256]
      jwks: { file: jwks.json }
  cache: { max_entries: $entries }
EOF
        if [[ $c == ward-jwt-rev ]]; then
            # Every verified token is checked against the revocations (jti, session, subject),
            # kept in process; without --redis-url the copy is this process's own, always in sync.
            cat >>"$p" <<EOF
sessions:
  revocation: { on_unsynced: fail_closed, max_token_lifetime: 1h }
EOF
        fi
    fi
    if [[ -n $WARD_POLICY_EXTRA ]]; then printf '%s\n' "$WARD_POLICY_EXTRA" >>"$p"; fi
    echo "$p"
}

# ---------------------------------------------------------------- servers

# start_case CASE: start the server of one case (the upstream is started by start_servers).
start_case() {
    local c=$1 port=${CASE_PORT[$1]:-} cfg
    case $c in
        upstream | upstream-tls) return ;;
        haproxy*)
            cfg=$RUN_DIR/$c.cfg
            render "$BENCH_DIR/haproxy.cfg" "$cfg" HAPROXY_PORT="$port"
            local env=(BENCH_CASE="$c")
            if is_jwt "$c"; then env+=(BENCH_JWT=1); fi
            env "${env[@]}" haproxy -c -q -f "$cfg" || die "$c: haproxy.cfg does not check"
            start "$c" env "${env[@]}" ${WRAP[@]+"${WRAP[@]}"} haproxy -db -f "$cfg"
            ;;
        nginx)
            render "$BENCH_DIR/nginx.conf" "$RUN_DIR/nginx.conf"
            # One process instead of master and worker (cost.sh: valgrind's callgrind_control
            # cannot reach a forked child); the same code serves the requests.
            if [[ -n $NGINX_SINGLE_PROCESS ]]; then
                sed -i 's/^master_process on;/master_process off;/' "$RUN_DIR/nginx.conf"
            fi
            start nginx env BENCH_CASE="$c" ${WRAP[@]+"${WRAP[@]}"} nginx -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf"
            ;;
        ward*)
            local policy extra=() base bin=$WARD_BIN
            base=$(base_case "$c")
            if [[ $c != "$base" ]]; then bin=$WARD_BIN_B; fi
            policy=$(ward_policy "$base" "$c")
            if [[ $base == ward-redis ]]; then extra=(--redis-url "$REDIS_URL" --redis-prefix "$REDIS_PREFIX"); fi
            if [[ $base == ward-jwt-rev ]]; then extra=(--admin-token-file "$RUN_DIR/admin.token"); fi
            "$bin" check "$policy" >/dev/null || die "$c: ward check refuses its policy"
            start "$c" env BENCH_CASE="$c" ${WRAP[@]+"${WRAP[@]}"} "$bin" proxy \
                --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$(admin_port "$c")" \
                --tls-cert "$CERT" --tls-key "$KEY" --policy "$policy" \
                --worker-threads 1 "${extra[@]}"
            ;;
        *) die "unknown case $c" ;;
    esac
}

# start_upstream: the certificate, the tokens and the upstream nginx, which every case needs.
start_upstream() {
    local port
    make_cert
    # The control API's token for ward-jwt-rev: made for this run, never printed.
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$RUN_DIR/admin.token")
    for port in $(seq "$PORT_BASE" $((PORT_BASE + ${WARD_BIN_B:+20} + 18))); do
        port_free "$port" || die "127.0.0.1:$port is in use (set PORT_BASE)"
    done
    make_tokens
    start_redis
    render "$BENCH_DIR/upstream-nginx.conf" "$RUN_DIR/upstream-nginx.conf"
    start upstream nginx -p "$RUN_DIR" -c "$RUN_DIR/upstream-nginx.conf"
    wait_port upstream "$UPSTREAM_PORT"
}

# wait_case CASE [SECONDS]: up to SECONDS (15) for CASE's server to listen (and a ward to be
# ready).
wait_case() {
    [[ $1 == upstream* ]] && return
    wait_port "$1" "${CASE_PORT[$1]}" "${2:-15}"
    if is_ward "$1"; then wait_ready "$1" "${2:-15}"; fi
    if [[ $(base_case "$1") == ward-jwt-rev ]]; then load_revocations "$1"; fi
}

# load_revocations CASE: REVOCATIONS (300) live revocations of other callers, a third each by
# token id, session and subject, through the control API: what every verified token is checked
# against (an empty list would skip the lookups).
load_revocations() {
    local port i kind status
    port=$(admin_port "$1")
    for ((i = 0; i < ${REVOCATIONS:-300}; i++)); do
        case $((i % 3)) in 0) kind=token ;; 1) kind=session ;; *) kind=subject ;; esac
        status=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -H "authorization: Bearer $(cat "$RUN_DIR/admin.token")" \
            -H 'content-type: application/json' -d "{\"kind\":\"$kind\",\"id\":\"bench-revoked-$i\"}" \
            "http://127.0.0.1:$port/revocations")
        [[ $status == 2* ]] || die "$1: revocation $i answered $status"
    done
}

# start_servers [SECONDS]: the upstream and every case's server, each waited for (SECONDS: how
# long to wait for each, 15).
start_servers() {
    local c
    start_upstream
    for c in $CASES; do start_case "$c"; done
    for c in $CASES; do wait_case "$c" "${1:-15}"; done
}

# url CASE PROTO: where the load goes.
url() {
    case $1 in
        upstream) [[ $2 == h1* ]] && echo "http://127.0.0.1:$UPSTREAM_PORT/" || echo "http://127.0.0.1:$UPSTREAM_H2C_PORT/" ;;
        *) echo "https://127.0.0.1:${CASE_PORT[$1]}/" ;;
    esac
}

# server CASE: the process whose CPU time and memory are "the proxy" for CASE.
server() {
    case $1 in
        upstream | upstream-tls) echo upstream ;;
        *) echo "$1" ;;
    esac
}

# ---------------------------------------------------------------- load

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

# load CASE PROTO SECONDS OUT: one load run; writes "requests rps p50_ms p99_ms
# errors" to OUT.result. JWT cases send the hot token, or the TOKENS distinct
# ones: wrk round-robin from a Lua script (bench/tokens.lua); h2load cannot vary
# a header per request, so it sends them in the query (?access_token=, which the
# JWT policies allow), one URI per token, from a file (-i).
load() {
    local c=$1 proto=$2 secs=$3 out=$4 u streams=1 conns=$CONNECTIONS
    u=$(url "$c" "$proto")
    local -a args=() post=()
    case $proto in
        h1 | h1c*)
            [[ $proto == h1c* ]] && conns=${proto#h1c}
            if many_tokens "$c"; then
                args=(-s "$BENCH_DIR/tokens.lua")
                post=(-- "$RUN_DIR/jwt/tokens.txt")
            elif sends_token "$c"; then
                args=(-H "Authorization: Bearer $HOT_TOKEN")
            fi
            bounded $((secs + 30)) "$out" \
                wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s --latency "${args[@]}" "$u" ${post[@]+"${post[@]}"} ||
                die "wrk failed: $(tail -3 "$out")"
            local req rps p50 p99 err
            req=$(awk '/requests in/ {print $1}' "$out")
            rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
            p50=$(latency_ms "$(awk '$1 == "50%" {print $2}' "$out")")
            p99=$(latency_ms "$(awk '$1 == "99%" {print $2}' "$out")")
            err=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/[^0-9 ]/, " "); n += $1 + $2 + $3 + $4} END {print n + 0}' "$out")
            echo "$req $rps $p50 $p99 $err" >"$out.result"
            ;;
        h2 | h2m* | h1r* | h2r*)
            # h1rN / h2rN: an offered load of N requests a second in all (spread over the
            # connections, one stream each), below what the proxy can serve, so throughput no
            # longer hides a stage's cost. h2load paces the connections together: requests still
            # arrive in bursts, and a stage's CPU time queues the requests behind it in a burst.
            local -a mode=() alpn=h2
            [[ $proto == h2m* ]] && streams=${proto#h2m}
            if [[ $proto == h[12]r* ]]; then
                local rate=${proto#h?r}
                [[ $rate =~ ^[0-9]+$ ]] && ((rate >= conns)) || die "$proto: the rate must be a number of at least $conns"
                mode=(--rps=$((rate / conns)))
                [[ $proto == h1r* ]] && { mode+=(--h1); alpn=http/1.1; }
            fi
            if many_tokens "$c"; then
                args=(-i "$RUN_DIR/jwt/uris-$c.txt")
                u=
            elif sends_token "$c"; then
                args=(-H "authorization: Bearer $HOT_TOKEN")
            fi
            bounded $((secs + 30)) "$out" \
                h2load -t1 -c"$conns" -m"$streams" ${mode[@]+"${mode[@]}"} -D "$secs" --log-file="$out.log" "${args[@]}" ${u:+"$u"} ||
                die "h2load failed: $(tail -3 "$out")"
            grep -q "^Application protocol: $alpn\$" "$out" ||
                die "h2load did not speak $alpn to $c: $(grep -i 'protocol' "$out")"
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
