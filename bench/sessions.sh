#!/usr/bin/env bash
# Benchmark (issue 7, "Performance"): what the session checks at the edge add to login and refresh.
# Not a test: it prints figures for the README.
#
# Three proxies from the same binary, as variants:
#   local    bench/payments-policy.yaml, no Redis: its rate limits are counted in memory
#   plain    the same policy with --redis-url: one Redis call per request (the rate limits,
#            counted in one script call), so plain - local is what one Redis round trip made by
#            ward costs a request end to end, on this machine, in this run
#   checks   plain plus login lockout (per account and per IP) and refresh-token single use, both
#            kept in Redis: checks - plain is what the session checks cost
# The aim (issue 7) is that the checks add at most one Redis round trip at p99: checks - plain
# is held against plain - local (the same round trip, measured end to end beside it), and, the
# strictest reading, against redis-benchmark's PING p99 (a C client, no proxy around it).
# Each measured run is one wrk connection, one request at a time (latency without queueing), on
# one route: login (always the right password) or refresh (a chain: each answer's new refresh
# token is the next request's, so every token is used once). Behind them, per UPSTREAMS:
#   stub      nginx answering login and refresh at once from memory (bench/sessions-stub-nginx.conf):
#             the end-to-end latency the checks add, not buried under the service's work
#   payments  the bundled payments service (SQLite): a login costs about 35 ms of password hashing
# One interleaved run per upstream: each round
# measures every (variant, route) pair, the order rotated per round; the table shows the median
# over rounds with the spread (half the range, in % of the median). Redis's own round trip on
# this machine is measured with redis-benchmark (PING, one client) in the same run.
#
# The script also prints what the checks held each request inside the checks proxy (its own
# histogram) next to ward's own Redis calls: the round trip as the proxy sees it, without the
# load generator's and the scheduler's share.
#
# Environment: UPSTREAMS ("stub payments"), ROUNDS (3), DURATION (10s), WARD_BIN (default target/release/ward; built if
# missing), REDIS_URL (redis://127.0.0.1:6379). Loopback only; every load is bounded by DURATION.
# Needs: wrk, curl, jq, openssl, redis-cli, redis-benchmark, nginx (for the stub).
set -euo pipefail

UPSTREAMS="${UPSTREAMS:-stub payments}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
root="$(cd "$(dirname "$0")/.." && pwd)"
ward="${WARD_BIN:-$root/target/release/ward}"
for tool in wrk curl jq openssl redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
if [[ $UPSTREAMS == *stub* ]] && ! command -v nginx >/dev/null; then
  echo "bench: nginx is required for the stub upstream (or set UPSTREAMS=payments)" >&2; exit 1
fi
if [[ ! -x $ward ]]; then
  (cd "$root" && flock /tmp/ward-cargo.lock cargo build --release --locked --quiet)
fi

work="$(mktemp -d)"
prefix="bench-sessions-$RANDOM$RANDOM"
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_all
  redis-cli -u "$REDIS_URL" --scan --pattern "$prefix*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Keys, secrets and the TLS certificate: made for this run, removed at exit.
"$ward" keys generate --kind signing --kid bench-1 --out "$work" >/dev/null
"$ward" keys generate --kind data --kid data-1 --out "$work" >/dev/null
"$ward" keys generate --kind secret --kid webhook --out "$work" >/dev/null
mkdir -p "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
head -c 32 /dev/urandom | base64 >"$work/lockout.key"

# wait_for FILE FIELD: the address a process logged in its JSON start line.
wait_for() {
  local v=""
  for _ in $(seq 1 100); do
    v="$(grep -o "\"$2\":\"[^\"]*\"" "$1" | head -1 | cut -d'"' -f4 || true)"
    [[ -n $v ]] && { echo "$v"; return; }
    sleep 0.1
  done
  echo "bench: nothing listens, see $1:" >&2; cat "$1" >&2; exit 1
}

# free_port: a loopback port nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_upstream NAME: starts the upstream, sets $service (its address) and $password.
start_upstream() {
  case "$1" in
    stub)
      local port
      port="$(free_port)"
      mkdir -p "$work/stub"
      sed -e "s|@RUN_DIR@|$work/stub|g" -e "s|@PORT@|$port|g" "$root/bench/sessions-stub-nginx.conf" >"$work/stub/nginx.conf"
      nginx -p "$work/stub" -c "$work/stub/nginx.conf" 2>"$work/stub.log" &
      pids+=($!)
      service="127.0.0.1:$port"
      password="stub-accepts-any-password"
      for _ in $(seq 1 100); do curl -sf -o /dev/null -X POST "http://$service/v1/auth/login" && return; sleep 0.1; done
      echo "bench: the stub upstream did not start:" >&2; cat "$work/stub.log" "$work/stub/stub-error.log" >&2; exit 1
      ;;
    payments)
      local db="sqlite://$work/bench.db"
      rm -f "$work/bench.db"
      password="$("$ward" payments bootstrap --database-url "$db" --tenant bench --email bench@example.com | awk '/^password:/ {print $2}')"
      RUST_LOG=warn "$ward" payments serve --listen 127.0.0.1:0 --database-url "$db" \
        --signing-key "bench-1=$work/bench-1.private.pem" --data-key "data-1=$work/data-1.datakey" \
        --webhook-secret-file "$work/webhook.secret" 2>"$work/payments.log" &
      pids+=($!)
      service="$(wait_for "$work/payments.log" addr)"
      ;;
    *) echo "bench: unknown upstream '$1' in UPSTREAMS (stub, payments)" >&2; exit 1 ;;
  esac
}

# start_proxies UPSTREAM: the two policies (the same routes; `checks` adds the session rules ahead
# of the auth route) and a proxy for each, in front of $service; sets base[] and admin[].
declare -A base admin
start_proxies() {
  local up="$1"
  mkdir -p "$work/$up/local" "$work/$up/plain" "$work/$up/checks"
  sed "s|url: http://127.0.0.1:8080|url: http://$service|" "$root/bench/payments-policy.yaml" >"$work/$up/plain/policy.yaml"
  awk -v key="$work/lockout.key" '
    /^defaults:/ && !done_sessions {
      print "sessions:"
      print "  lockout_key: { secret_file: " key " }"
      done_sessions = 1
    }
    /^  - name: auth$/ && !done_routes {
      print "  - name: login"
      print "    match: { path: { exact: /v1/auth/login } }"
      print "    limits: { methods: [POST] }"
      print "    lockout:"
      print "      identity: [tenant, email]"
      print "      failure_statuses: [401]"
      print "      max_failures: 5"
      print "      window: 15m"
      print "      lock_for: 15m"
      print "      per_ip: { max_failures: 20, window: 15m, lock_for: 15m }"
      print "  - name: refresh"
      print "    match: { path: { exact: /v1/auth/refresh } }"
      print "    limits: { methods: [POST] }"
      print "    refresh_token: { json_field: refresh_token, family_header: X-Session-Id, lifetime: 7d }"
      done_routes = 1
    }
    { print }
  ' "$work/$up/plain/policy.yaml" >"$work/$up/checks/policy.yaml"
  "$ward" check "$work/$up/checks/policy.yaml" >/dev/null
  cp "$work/$up/plain/policy.yaml" "$work/$up/local/policy.yaml"
  for v in local plain checks; do
    local redis=(--redis-url "$REDIS_URL" --redis-prefix "$prefix-$up-$v")
    [[ $v == local ]] && redis=()
    "$ward" proxy --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --tls-cert "$work/tls/cert.pem" \
      --tls-key "$work/tls/key.pem" --policy "$work/$up/$v/policy.yaml" --log-level warn,ward=info \
      "${redis[@]}" >"$work/proxy-$up-$v.log" 2>&1 &
    pids+=($!)
    base[$v]="https://$(wait_for "$work/proxy-$up-$v.log" listen)"
    admin[$v]="http://$(wait_for "$work/proxy-$up-$v.log" admin)"
  done
}

# write_scripts: wrk's request scripts (the login body carries $password).
write_scripts() {
  login_body="{\"tenant\":\"bench\",\"email\":\"bench@example.com\",\"password\":\"$password\"}"
  cat >"$work/login.lua" <<LUA
wrk.method = "POST"
wrk.body = '$login_body'
wrk.headers["Content-Type"] = "application/json"
LUA
  cat >"$work/refresh.lua" <<'LUA'
-- One chain of refresh tokens: every answer's new token is the next request's.
local token = os.getenv("WARD_BENCH_REFRESH")
local broken = 0
function request()
  return wrk.format("POST", "/v1/auth/refresh", { ["Content-Type"] = "application/json" },
    '{"refresh_token":"' .. token .. '"}')
end
function response(status, headers, body)
  local t = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  if status == 200 and t then token = t else broken = broken + 1 end
end
function done(summary, latency, requests)
  io.write(string.format("CHAIN broken=%d\n", broken))
end
LUA
}
# measure VARIANT ROUTE: one wrk run; prints "req/s p50_ms p99_ms non2xx".
measure() {
  local v="$1" route="$2" out
  if [[ $route == login ]]; then
    out="$(wrk -t1 -c1 -d"$DURATION" --latency -s "$work/login.lua" "${base[$v]}/v1/auth/login")"
  else
    local refresh
    refresh="$(curl -skf "${base[$v]}/v1/auth/login" -H 'content-type: application/json' -d "$login_body" | jq -r .refresh_token)"
    out="$(WARD_BENCH_REFRESH="$refresh" wrk -t1 -c1 -d"$DURATION" --latency -s "$work/refresh.lua" "${base[$v]}/v1/auth/refresh")"
    if ! grep -q 'CHAIN broken=0' <<<"$out"; then echo "bench: the refresh chain broke ($v): $out" >&2; exit 1; fi
  fi
  if grep -q 'Non-2xx' <<<"$out"; then echo "bench: non-2xx answers ($v $route): $out" >&2; exit 1; fi
  awk '
    function ms(x) { if (x ~ /us$/) return x / 1000; if (x ~ /ms$/) return x + 0; if (x ~ /s$/) return x * 1000; return x }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%s %.3f %.3f\n", rps, p50, p99 }' <<<"$out"
}

redis_rtt() {
  redis-benchmark -u "$REDIS_URL" -t ping -c 1 -n 20000 2>/dev/null |
    awk '/latency summary/ { getline; getline; printf "%s %s\n", $3, $5; exit }'
}

# Median and spread per (variant, route); then the checks' cost (checks - plain) against one
# Redis round trip end to end (plain - local) and against Redis's PING p99.
summary() {
  awk '
    function sort(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
    function median(a, n) { sort(a, n); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function spread(a, n, m) { sort(a, n); return m > 0 ? 50 * (a[n] - a[1]) / m : 0 }
    $2 != "redis" {
      k = $2 " " $3; n[k]++
      rps[k, n[k]] = $4; p50[k, n[k]] = $5; p99[k, n[k]] = $6
    }
    $2 == "redis" { rn++; r50[rn] = $4; r99[rn] = $5 }
    END {
      printf "%-16s %10s %6s %8s %8s %6s\n", "variant route", "req/s", "±%", "p50_ms", "p99_ms", "±%"
      nk = split("local login|plain login|checks login|local refresh|plain refresh|checks refresh", ks, "|")
      for (i = 1; i <= nk; i++) {
        k = ks[i]; m = n[k]
        for (j = 1; j <= m; j++) { a[j] = rps[k, j]; b[j] = p50[k, j]; c[j] = p99[k, j] }
        R[k] = median(a, m); rs = spread(a, m, R[k])
        for (j = 1; j <= m; j++) a[j] = rps[k, j]
        P50[k] = median(b, m)
        for (j = 1; j <= m; j++) c[j] = p99[k, j]
        P99[k] = median(c, m); ps = spread(c, m, P99[k])
        printf "%-16s %10.1f %6.1f %8.3f %8.3f %6.1f\n", k, R[k], rs, P50[k], P99[k], ps
      }
      rp50 = median(r50, rn); rp99 = median(r99, rn)
      printf "\nRedis PING, one client (redis-benchmark): p50 %.3f ms, p99 %.3f ms (median of %d)\n", rp50, rp99, rn
      printf "\n%-8s %-28s %10s %10s %9s  %s\n", "route", "added (median of rounds)", "p50_ms", "p99_ms", "req/s", "aim: at most one Redis round trip at p99"
      for (i = 0; i < 2; i++) {
        route = i ? "refresh" : "login"
        kc = "checks " route; kp = "plain " route; kl = "local " route
        rtt50 = P50[kp] - P50[kl]; rtt99 = P99[kp] - P99[kl]
        d50 = P50[kc] - P50[kp]; d99 = P99[kc] - P99[kp]
        printf "%-8s %-28s %+10.3f %+10.3f %8.2fx\n", route, "one Redis call (plain-local)", rtt50, rtt99, R[kp] / R[kl]
        printf "%-8s %-28s %+10.3f %+10.3f %8.2fx  %s against plain-local; %s against PING p99 %.3f ms\n", route, "session checks (checks-plain)", d50, d99, R[kc] / R[kp],
          d99 <= rtt99 ? "met" : "MISSED", d99 <= rp99 ? "met" : "MISSED", rp99
      }
    }'
}
# Inside the checks proxy, over every request of the run: what the session checks held each
# request (ward_session_check_duration_seconds, before the upstream and on its answer; deferred
# writes not included) against ward's own Redis calls (ward_redis_call_duration_seconds), as
# quantiles interpolated within histogram buckets the way Prometheus's histogram_quantile does.
in_process() {
  curl -sf "${admin[checks]}/metrics" | awk '
    function q(name, phi,   i, rank, lo, hi, clo, chi) {
      rank = phi * C[name, N[name]]
      for (i = 1; i <= N[name]; i++) if (C[name, i] >= rank) break
      hi = LE[name, i]; lo = i > 1 ? LE[name, i - 1] : 0; clo = i > 1 ? C[name, i - 1] : 0; chi = C[name, i]
      if (hi == "+Inf") return lo * 1000
      return (lo + (hi - lo) * (chi > clo ? (rank - clo) / (chi - clo) : 1)) * 1000
    }
    /^ward_(session_check|redis_call)_duration_seconds_bucket/ {
      name = $1; sub(/_bucket.*/, "", name)
      if (match($1, /route="[^"]*"/)) name = name " " substr($1, RSTART + 7, RLENGTH - 8)
      le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
      N[name]++; LE[name, N[name]] = le; C[name, N[name]] = $2
      if (!(name in seen)) { seen[name] = 1; order[++k] = name }
    }
    END {
      printf "%-52s %9s %8s %8s\n", "inside ward (checks proxy), whole run", "requests", "p50_ms", "p99_ms"
      for (j = 1; j <= k; j++) { n = order[j]; printf "%-52s %9d %8.3f %8.3f\n", n, C[n, N[n]], q(n, 0.5), q(n, 0.99) }
    }'
}

# run_upstream NAME: the interleaved rounds against one upstream, then its tables.
run_upstream() {
  local up="$1" results="$work/results-$1"
  start_upstream "$up"
  start_proxies "$up"
  write_scripts
  local pairs=("local login" "plain login" "checks login" "local refresh" "plain refresh" "checks refresh")
  : >"$results"
  for r in $(seq 1 "$ROUNDS"); do
    local n=${#pairs[@]}
    for i in $(seq 0 $((n - 1))); do
      local pair="${pairs[$(((i + r - 1) % n))]}" v route
      read -r v route <<<"$pair"
      echo "$up $r $v $route $(measure "$v" "$route")" | tee -a "$results" >&2
    done
    echo "$up $r redis ping $(redis_rtt)" | tee -a "$results" >&2
  done
  echo
  echo "upstream: $up ($service)"
  cut -d' ' -f2- "$results" | summary
  echo
  in_process
  stop_all
}

echo "ward sessions benchmark: $ROUNDS interleaved rounds of $DURATION per (variant, route), 1 connection" >"$work/report"
echo "ward: $("$ward" --version 2>&1 | head -1)" >>"$work/report"
for up in $UPSTREAMS; do
  run_upstream "$up" >>"$work/report"
done
echo
cat "$work/report"
