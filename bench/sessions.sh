#!/usr/bin/env bash
# Benchmark (issue 7, "Performance"): what the session checks at the edge add to login and refresh.
# Not a test: it prints figures for the README.
#
# The bundled payments service (SQLite) behind two proxies from the same binary, both with
# --redis-url (so rate limits go to Redis in both, and only the session checks differ):
#   plain    bench/payments-policy.yaml
#   checks   the same plus login lockout (per account and per IP) and refresh-token single use,
#            both kept in Redis
# Each measured run is one wrk connection, one request at a time (latency without queueing), on
# one route: login (always the right password) or refresh (a chain: each answer's new refresh
# token is the next request's, so every token is used once). One interleaved run: each round
# measures every (variant, route) pair, the order rotated per round; the table shows the median
# over rounds with the spread (half the range, in % of the median). Redis's own round trip on
# this machine is measured with redis-benchmark (PING, one client) in the same run.
#
# End-to-end p99 on a busy 2-core machine moves by milliseconds, far more than one Redis round
# trip, so the script also prints what the checks held each request inside the checks proxy (its
# own histogram) next to ward's own Redis calls: the direct answer to "at most one round trip".
#
# Environment: ROUNDS (3), DURATION (10s), WARD_BIN (default target/release/ward; built if
# missing), REDIS_URL (redis://127.0.0.1:6379). Loopback only; every load is bounded by DURATION.
# Needs: wrk, curl, jq, openssl, redis-cli, redis-benchmark.
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
root="$(cd "$(dirname "$0")/.." && pwd)"
ward="${WARD_BIN:-$root/target/release/ward}"
for tool in wrk curl jq openssl redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
if [[ ! -x $ward ]]; then
  (cd "$root" && flock /tmp/ward-cargo.lock cargo build --release --locked --quiet)
fi

work="$(mktemp -d)"
prefix="bench-sessions-$RANDOM$RANDOM"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
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

db="sqlite://$work/bench.db"
password="$("$ward" payments bootstrap --database-url "$db" --tenant bench --email bench@example.com | awk '/^password:/ {print $2}')"
RUST_LOG=warn "$ward" payments serve --listen 127.0.0.1:0 --database-url "$db" \
  --signing-key "bench-1=$work/bench-1.private.pem" --data-key "data-1=$work/data-1.datakey" \
  --webhook-secret-file "$work/webhook.secret" 2>"$work/payments.log" &
pids+=($!)

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
service="$(wait_for "$work/payments.log" addr)"

# The two policies: the same routes; `checks` adds the session rules ahead of the auth route.
mkdir -p "$work/plain" "$work/checks"
sed "s|url: http://127.0.0.1:8080|url: http://$service|" "$root/bench/payments-policy.yaml" >"$work/plain/policy.yaml"
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
' "$work/plain/policy.yaml" >"$work/checks/policy.yaml"

declare -A base admin
for v in plain checks; do
  "$ward" proxy --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --tls-cert "$work/tls/cert.pem" \
    --tls-key "$work/tls/key.pem" --policy "$work/$v/policy.yaml" --log-level warn,ward=info \
    --redis-url "$REDIS_URL" --redis-prefix "$prefix-$v" >"$work/proxy-$v.log" 2>&1 &
  pids+=($!)
  base[$v]="https://$(wait_for "$work/proxy-$v.log" listen)"
  admin[$v]="http://$(wait_for "$work/proxy-$v.log" admin)"
done
"$ward" check "$work/checks/policy.yaml" >/dev/null

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

pairs=("plain login" "checks login" "plain refresh" "checks refresh")
results="$work/results"
: >"$results"
for r in $(seq 1 "$ROUNDS"); do
  n=${#pairs[@]}
  for i in $(seq 0 $((n - 1))); do
    pair="${pairs[$(((i + r - 1) % n))]}"
    read -r v route <<<"$pair"
    echo "$r $v $route $(measure "$v" "$route")" | tee -a "$results" >&2
  done
  echo "$r redis ping $(redis_rtt)" | tee -a "$results" >&2
done

# Median and spread per (variant, route); then the checks' cost against plain and Redis's p99.
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
      split("plain login|checks login|plain refresh|checks refresh", ks, "|")
      for (i = 1; i <= 4; i++) {
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
      for (i = 0; i < 2; i++) {
        route = i ? "refresh" : "login"
        d50 = P50["checks " route] - P50["plain " route]; d99 = P99["checks " route] - P99["plain " route]
        printf "%-8s checks/plain req/s %.2fx; added p50 %+.3f ms, p99 %+.3f ms (aim: at most one Redis round trip, %.3f ms at p99): %s\n",
          route, R["checks " route] / R["plain " route], d50, d99, rp99, d99 <= rp99 ? "met" : "MISSED"
      }
    }' "$results"
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

echo
echo "ward sessions benchmark: $ROUNDS interleaved rounds of $DURATION per (variant, route), 1 connection"
echo "ward: $("$ward" --version 2>&1 | head -1)"
summary
echo
in_process
