#!/usr/bin/env bash
# Benchmark: payments created per second and latency percentiles at N concurrent clients, on SQLite
# and on PostgreSQL. Not a test: it prints figures for docs/payments.md.
#
#   bench/payments.sh [sqlite|postgres|both]      (default both)
#
# Environment: CONNECTIONS (default 32), DURATION (default 20s), THREADS (default 2),
#              VIA (default "proxy direct"): "proxy" sends the load through `ward proxy` (TLS,
#              bench/payments-policy.yaml) in front of the service, "direct" straight to the service;
#              both, one after the other on the same database, for a side-by-side ratio.
#              PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres).
# Needs: wrk, curl, jq, psql (apt-get install wrk curl jq postgresql-client).
# Every key, secret and password is generated for this run in a temp dir and removed at the end.
set -euo pipefail

which_stores="${1:-both}"
CONNECTIONS="${CONNECTIONS:-32}"
DURATION="${DURATION:-20s}"
THREADS="${THREADS:-2}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
root="$(cd "$(dirname "$0")/.." && pwd)"

VIA="${VIA:-proxy direct}"
for tool in wrk curl jq psql openssl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

echo "== building ward (release)"
(cd "$root" && flock /tmp/ward-cargo.lock cargo build --release --quiet)
ward="$root/target/release/ward"

work="$(mktemp -d)"
server_pid=""
proxy_pid=""
pg_db=""
cleanup() {
  if [[ -n "$proxy_pid" ]]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [[ -n "$pg_db" ]]; then psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$ward" keys generate --kind signing --kid bench-1 --out "$work" >/dev/null
# The proxy's throwaway TLS certificate and its policy, each in its own directory (ward watches them).
mkdir -p "$work/tls" "$work/policy"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
"$ward" keys generate --kind data --kid data-1 --out "$work" >/dev/null
"$ward" keys generate --kind secret --kid webhook --out "$work" >/dev/null

cat > "$work/payments.lua" <<'LUA'
-- Each request gets a unique Idempotency-Key so every request creates a payment.
local threads = {}
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  token = os.getenv("WARD_BENCH_TOKEN")
  run = os.getenv("WARD_BENCH_RUN")
  n = 0
  created = 0
  other = 0
  body = '{"amount":"12.50","currency":"EUR","description":"bench","payer_account":"DE89 3704 0044 0532 0130 00"}'
end
function request()
  n = n + 1
  return wrk.format("POST", "/v1/payments", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
    ["Idempotency-Key"] = run .. "-" .. tid .. "-" .. n,
  }, body)
end
function response(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    o = o + t:get("other")
  end
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT created=%d non201=%d errors=%d seconds=%.2f payments_per_s=%.0f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    c, o, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    secs, c / secs, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
LUA

# measure STORE VIA BASE PASSWORD: log in through BASE, warm up, then the measured wrk run.
measure() {
  local store="$1" via="$2" base="$3" password="$4" token
  token="$(curl -skf "$base/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"tenant\":\"bench\",\"email\":\"bench@example.com\",\"password\":\"$password\"}" | jq -r .access_token)"
  # Warm up connections and caches, then measure.
  WARD_BENCH_TOKEN="$token" WARD_BENCH_RUN="warm-$via" wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$work/payments.lua" "$base/v1/payments" >/dev/null
  echo "== $store via $via: $CONNECTIONS connections, $DURATION, target $base"
  WARD_BENCH_TOKEN="$token" WARD_BENCH_RUN="run-$via" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "$work/payments.lua" "$base/v1/payments" | grep RESULT | sed "s/^RESULT/$store via $via:/"
}

run_one() {
  local store="$1" url
  case "$store" in
    sqlite) url="sqlite://$work/bench.db" ;;
    postgres)
      pg_db="ward_bench_$$"
      psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $pg_db" >/dev/null
      url="${PG_ADMIN_URL%/*}/$pg_db" ;;
  esac
  local creds password
  creds="$("$ward" payments bootstrap --database-url "$url" --tenant bench --email bench@example.com)"
  password="$(awk '/^password:/ {print $2}' <<<"$creds")"

  RUST_LOG=warn,ward::payments=info "$ward" payments serve --listen 127.0.0.1:0 --database-url "$url" \
    --signing-key "bench-1=$work/bench-1.private.pem" --data-key "data-1=$work/data-1.datakey" \
    --webhook-secret-file "$work/webhook.secret" 2>"$work/$store.log" &
  server_pid=$!
  # Production-like logging: one JSON line per request. The listening line carries the bound address.
  local addr=""
  for _ in $(seq 1 100); do
    addr="$(grep -o '"addr":"[^"]*"' "$work/$store.log" | head -1 | cut -d'"' -f4 || true)"
    [[ -n "$addr" ]] && break
    sleep 0.1
  done
  [[ -n "$addr" ]] || { echo "bench: service did not start:"; cat "$work/$store.log"; exit 1; }
  local via base
  for via in $VIA; do
    base="http://$addr"
    if [[ "$via" == proxy ]]; then
      sed "s|url: http://127.0.0.1:8080|url: http://$addr|" "$root/bench/payments-policy.yaml" >"$work/policy/policy.yaml"
      "$ward" proxy --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --tls-cert "$work/tls/cert.pem" \
        --tls-key "$work/tls/key.pem" --policy "$work/policy/policy.yaml" --log-level warn,ward=info \
        >"$work/proxy-$store.log" 2>&1 &
      proxy_pid=$!
      local listen=""
      for _ in $(seq 1 100); do
        listen="$(grep -o '"listen":"[^"]*"' "$work/proxy-$store.log" | head -1 | cut -d'"' -f4 || true)"
        [[ -n "$listen" ]] && break
        sleep 0.1
      done
      [[ -n "$listen" ]] || { echo "bench: proxy did not start:"; cat "$work/proxy-$store.log"; exit 1; }
      base="https://$listen"
    fi
    measure "$store" "$via" "$base" "$password"
    if [[ -n "$proxy_pid" ]]; then kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""; fi
  done
  "$ward" audit verify --database-url "$url" 2>/dev/null | sed "s/^/$store: /"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
  if [[ "$store" == postgres ]]; then
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null; pg_db=""
  fi
}

case "$which_stores" in
  sqlite|postgres) run_one "$which_stores" ;;
  both) run_one sqlite; run_one postgres ;;
  *) echo "usage: $0 [sqlite|postgres|both]" >&2; exit 2 ;;
esac
