#!/usr/bin/env bash
# Benchmark ward against HAProxy and nginx (issue 2, "Performance"; issue 6, "Performance";
# issue 9, item 6).
#
# One interleaved run: every round runs each protocol against each case, in a
# rotated order, so that drift on a shared machine spreads over all cases.
# Cases (bench/lib.sh has the list): the upstream direct (plain HTTP), the
# upstream behind TLS only, ward, HAProxy and nginx with the same policy (TLS, a
# rate limit that never triggers, security headers, a 1 MiB body limit); ward
# and HAProxy with JWT verification on top (a hot token, 10,000 distinct tokens,
# ward also without its verified-token cache); ward with its limit in Redis.
# The load generator runs on one core, the proxy and the upstream on the other.
#
# Usage: bench/proxy.sh            (from anywhere; root installs missing tools)
# Settings, from the environment (and those of bench/lib.sh):
#   DURATION=10     seconds of each measured load run
#   WARMUP=2        seconds of load before each measured run, not measured
#   ROUNDS=3        interleaved rounds; the table shows the median of rounds
#   CONNECTIONS=64  keep-alive connections
#   CASES="upstream upstream-tls ward ward-jwt ward-jwt10k ward-jwt10k-nocache
#          ward-jwt-rev ward-redis haproxy haproxy-jwt haproxy-jwt10k nginx"
#   PROTOCOLS="h1 h2 h2m10"   h1: wrk; h2: h2load, 1 stream per connection;
#                             h2m10: h2load, 10 concurrent streams per connection;
#                             also h1cN: wrk with N connections (h1c1: latency unloaded)
#                             h1rN / h2rN: h2load offering N req/s in all over the connections
#                             (below saturation: what a stage adds to latency, not to queueing)
#   RESULTS=bench/results/proxy   writes RESULTS.csv (every run of every round)
#                             and RESULTS.txt (what the script prints); empty: none
set -Eeuo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
CASES=${CASES:-$ALL_CASES}
PROTOCOLS=${PROTOCOLS:-h1 h2 h2m10}
RESULTS=${RESULTS-$BENCH_DIR/results/proxy}

# ---------------------------------------------------------------- checks before the load

# auth_curl CASE: curl arguments that authenticate a check request of CASE, if it needs them.
auth_curl() {
    if sends_token "$1"; then printf '%s\n' -H "Authorization: Bearer $(token_of "$1")"; fi
}

# Before the load: show what each case answers, and check that the policy is
# really the same (headers, Server, body limit on Content-Length and chunked).
# JWT cases are asked with a valid token, so that what is shown is a 200.
check_equivalence() {
    local c u headers h missing big cl chunked
    local -a auth
    big=$RUN_DIR/body-2MiB
    head -c $((2 * 1024 * 1024)) /dev/zero >"$big"
    printf '\nWhat each case answers (2 MiB bodies expect 413 from the proxies; JWT cases with a valid token):\n'
    printf '%-20s %-6s %-36s %-16s %-10s %-13s %s\n' case alpn tls missing-headers server length-2MiB chunked-2MiB
    for c in $CASES; do
        u=$(url "$c" h1)
        mapfile -t auth < <(auth_curl "$c")
        headers=$(curl -sk --http1.1 --max-time 5 ${auth[@]+"${auth[@]}"} -o /dev/null -D - "$u" | tr -d '\r')
        missing=""
        for h in strict-transport-security x-content-type-options x-frame-options \
            referrer-policy content-security-policy cache-control; do
            grep -qi "^$h:" <<<"$headers" || missing+="$h "
        done
        [[ $c == upstream* ]] && missing="(no policy)"
        local srv alpn tls status
        status=$(head -1 <<<"$headers" | cut -d' ' -f2)
        [[ $status == 200 ]] || die "$c answers $status to a plain GET (with a valid token where needed)"
        srv=$(grep -i '^server:' <<<"$headers" | cut -d' ' -f2- || true)
        alpn=-
        tls=plain
        if [[ $u == https* ]]; then
            local hs hostport=${u#https://}
            hs=$(timeout 5 openssl s_client -connect "${hostport%/}" -alpn h2,http/1.1 </dev/null 2>&1 | tr -d '\r\0' || true)
            tls=$(sed -n 's/^New, \([^,]*\), Cipher is \(.*\)/\1 \2/p' <<<"$hs" | head -1)
            alpn=$(sed -n 's/^ALPN protocol: //p' <<<"$hs" | head -1)
        fi
        cl=$(curl -sk --http1.1 --max-time 10 ${auth[@]+"${auth[@]}"} -o /dev/null -w '%{http_code}' \
            --data-binary "@$big" "${u%/}/upload" || true)
        chunked=$(curl -sk --http1.1 --max-time 10 ${auth[@]+"${auth[@]}"} -o /dev/null -w '%{http_code}' \
            -H 'Transfer-Encoding: chunked' --data-binary "@$big" "${u%/}/upload" || true)
        printf '%-20s %-6s %-36s %-16s %-10s %-13s %s\n' "$c" "${alpn:--}" "${tls:--}" "${missing:-none}" \
            "${srv:-(none)}" "$cl" "$chunked"
    done
    rm -f "$big"
}

# status_both URL [CURL ARGS...]: the status over HTTP/1.1 and HTTP/2, "401" when they agree,
# "401/200" when not.
status_both() {
    local u=$1 a b
    shift
    a=$(curl -sk --http1.1 --max-time 5 -o /dev/null -w '%{http_code}' "$@" "$u" || true)
    b=$(curl -sk --http2 --max-time 5 -o /dev/null -w '%{http_code}' "$@" "$u" || true)
    [[ $a == "$b" ]] && echo "$a" || echo "$a/$b"
}

# check_jwt: every JWT case refuses each bad token (401) and accepts a valid one (200), in the
# Authorization header and in the query (how the h2 load sends the 10,000 tokens), over HTTP/1.1
# and HTTP/2. A case that does not is fatal: its figures would mean nothing.
check_jwt() {
    any_case is_jwt || return 0
    local c u bad got want row failed=""
    local -a kinds=(forged tampered expired wrong-aud wrong-iss alg-none)
    printf '\nJWT checks, HTTP/1.1 and HTTP/2 (expect 401 for every bad token, 200 for a valid one):\n'
    printf '%-20s %-8s' case no-token
    printf ' %-9s' "${kinds[@]}"
    printf ' %-7s %-9s %-9s %s\n' valid q-valid q-forged result
    for c in $CASES; do
        is_jwt "$c" || continue
        u=$(url "$c" h1)
        row=$(printf '%-20s %-8s' "$c" "$(status_both "$u")")
        want="401"
        for bad in "${kinds[@]}"; do
            got=$(status_both "$u" -H "Authorization: Bearer $(cat "$RUN_DIR/jwt/bad-$bad.txt")")
            row+=$(printf ' %-9s' "$got")
            want+=" 401"
        done
        row+=$(printf ' %-7s' "$(status_both "$u" -H "Authorization: Bearer $(token_of "$c")")")
        row+=$(printf ' %-9s' "$(status_both "${u}?access_token=$(token_of "$c")")")
        row+=$(printf ' %-9s' "$(status_both "${u}?access_token=$(cat "$RUN_DIR/jwt/bad-forged.txt")")")
        want+=" 200 200 401"
        # The statuses in the row, after the case name, against what they must be.
        if [[ $(awk '{$1 = ""; print substr($0, 2)}' <<<"$row") == "$want" ]]; then
            printf '%s ok\n' "$row"
        else
            printf '%s WRONG\n' "$row"
            failed+=" $c"
        fi
    done
    [[ -z $failed ]] || die "JWT checks failed for:$failed"
}

# check_redis: ward-redis really counts in Redis (one call per request), its Redis is up.
check_redis() {
    has_case ward-redis || return 0
    local before after up
    before=$(ward_metric ward-redis ward_redis_call_duration_seconds_count)
    curl -sk --max-time 5 -o /dev/null "$(url ward-redis h1)"
    after=$(ward_metric ward-redis ward_redis_call_duration_seconds_count)
    up=$(ward_metric ward-redis ward_redis_up)
    printf '\nward-redis: Redis %s (up %s), key prefix %s, Redis calls for one request: %s\n' \
        "$REDIS_URL" "$up" "$REDIS_PREFIX" $((after - before))
    ((up == 1 && after > before)) || die "ward-redis does not count in Redis"
}

# prime_caches: before the rounds, send each of the TOKENS tokens once to every ward case that
# caches them (one h2load connection walking the token list, 64 streams at a time), so that every
# measured run of ward-jwt10k is a run of cache hits, as after any warm-up in production.
prime_caches() {
    local c entries
    for c in $CASES; do
        if ! { is_ward "$c" && many_tokens "$c" && [[ $c != *-nocache ]]; }; then continue; fi
        bounded 300 "$RUN_DIR/prime-$c.out" \
            h2load -c1 -m64 -n "$TOKENS" -i "$RUN_DIR/jwt/uris-$c.txt" || die "priming $c failed"
        entries=$(ward_metric "$c" ward_token_cache_entries)
        printf '\n%s: token cache primed with the %s tokens, %s entries\n' "$c" "$TOKENS" "$entries"
        ((entries >= TOKENS)) || die "$c's token cache holds $entries entries, fewer than the $TOKENS tokens"
    done
}

# ---------------------------------------------------------------- load

# truncate_logs: empty the request logs (each server's output, nginx's access
# log) between runs, so that a long run does not fill the disk. The servers
# write them in append mode, so they go on at the new end.
truncate_logs() {
    local f name
    for name in "${!PIDS[@]}" nginx-access; do
        for f in "$RUN_DIR/$name.out" "$RUN_DIR/$name.log"; do
            if [[ -f $f ]]; then : >"$f"; fi
        done
    done
}

REDIS_PID=
redis_ticks() { if [[ -n $REDIS_PID ]]; then cpu_ticks_pid "$REDIS_PID"; else echo 0; fi; }

# measure ROUND CASE PROTO: warm up, run, append one line to results.tsv.
measure() {
    local round=$1 c=$2 proto=$3 srv hz before up_before after up_after
    srv=$(server "$c")
    hz=$(getconf CLK_TCK)
    if ((WARMUP > 0)); then load "$c" "$proto" "$WARMUP" "$RUN_DIR/warmup.out"; fi
    # What only some cases have: Redis's own CPU and calls, the token cache's hits.
    local r_before=0 calls_before=0 hit_before=0 miss_before=0 fb_before=0 to_before=0 bo_before=0
    if uses_redis "$c"; then
        r_before=$(redis_ticks)
        calls_before=$(ward_metric "$c" ward_redis_call_duration_seconds_count)
        fb_before=$(ward_metric "$c" ward_rate_limit_fallbacks_total)
        to_before=$(ward_metric "$c" 'ward_redis_errors_total{kind="timeout"')
        bo_before=$(ward_metric "$c" 'ward_redis_errors_total{kind="breaker_open"')
    fi
    if is_ward "$c" && is_jwt "$c"; then
        hit_before=$(ward_metric "$c" 'ward_token_cache_lookups_total{result="hit"}')
        miss_before=$(ward_metric "$c" 'ward_token_cache_lookups_total{result="miss"}')
    fi
    before=$(cpu_ticks "$srv")
    up_before=$(cpu_ticks upstream)
    local out=$RUN_DIR/r$round-$c-$proto.out req rps p50 p99 err
    load "$c" "$proto" "$DURATION" "$out"
    read -r req rps p50 p99 err <"$out.result"
    after=$(cpu_ticks "$srv")
    up_after=$(cpu_ticks upstream)
    local redis_us=- redis_calls=- hit_pct=- fallbacks=- timeouts=- breaker=-
    if uses_redis "$c"; then
        # Decisions taken locally because a Redis call failed, ran past its deadline or was
        # not made (breaker open): not the Redis path, so they must be counted.
        fallbacks=$(($(ward_metric "$c" ward_rate_limit_fallbacks_total) - fb_before))
        timeouts=$(($(ward_metric "$c" 'ward_redis_errors_total{kind="timeout"') - to_before))
        breaker=$(($(ward_metric "$c" 'ward_redis_errors_total{kind="breaker_open"') - bo_before))
        redis_us=$(awk -v t=$(($(redis_ticks) - r_before)) -v hz="$hz" -v n="$req" 'BEGIN {printf "%.2f", n ? t / hz * 1e6 / n : 0}')
        [[ -n $REDIS_PID ]] || redis_us=-
        redis_calls=$(awk -v t=$(($(ward_metric "$c" ward_redis_call_duration_seconds_count) - calls_before)) -v n="$req" \
            'BEGIN {printf "%.2f", n ? t / n : 0}')
    fi
    if is_ward "$c" && is_jwt "$c"; then
        local hits misses
        hits=$(($(ward_metric "$c" 'ward_token_cache_lookups_total{result="hit"}') - hit_before))
        misses=$(($(ward_metric "$c" 'ward_token_cache_lookups_total{result="miss"}') - miss_before))
        hit_pct=$(awk -v h="$hits" -v m="$misses" 'BEGIN {printf "%.1f", h + m ? 100 * h / (h + m) : 0}')
    fi
    local cpu up_cpu
    cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$req" 'BEGIN {printf "%.2f", n ? t / hz * 1e6 / n : 0}')
    up_cpu=$(awk -v t=$((up_after - up_before)) -v hz="$hz" -v n="$req" 'BEGIN {printf "%.2f", n ? t / hz * 1e6 / n : 0}')
    # How busy each core was: near 100 % for the servers means the proxy is
    # the bottleneck, as intended; near 100 % for the generator means it is not.
    local busy=$((after - before + up_after - up_before)) srv_pct gen_pct
    [[ $srv == upstream ]] && busy=$((after - before)) && up_cpu=-
    srv_pct=$(awk -v t="$busy" -v hz="$hz" -v d="$DURATION" 'BEGIN {printf "%.0f", t / hz / d * 100}')
    gen_pct=$(awk -v t="$(cat "$out.cpu")" -v d="$DURATION" 'BEGIN {printf "%.0f", t / d * 100}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$proto" "$rps" "$p50" "$p99" \
        "$cpu" "$up_cpu" "$err" "$srv_pct" "$gen_pct" "$redis_us" "$redis_calls" "$hit_pct" \
        "$fallbacks" "$timeouts" "$breaker" "$req" >>"$RUN_DIR/results.tsv"
    truncate_logs
    log "round $round  $(printf '%-19s %-6s %8.0f req/s  p50 %7.3f ms  p99 %7.3f ms  %6s + %6s us/req  cores %3s%% %3s%%  %s errors' \
        "$c" "$proto" "$rps" "$p50" "$p99" "$cpu" "$up_cpu" "$srv_pct" "$gen_pct" "$err")"
}

# ---------------------------------------------------------------- report

median() {
    sort -g | awk '{a[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# column CASE PROTO N: the median of column N over the rounds ("nan" if none).
column() {
    awk -F'\t' -v c="$1" -v p="$2" -v n="$3" '$2 == c && $3 == p && $n != "-" {print $n}' "$RUN_DIR/results.tsv" | median
}

# spread CASE PROTO N: half the range of column N over the rounds, in % of its median.
spread() {
    local m
    m=$(column "$1" "$2" "$3")
    awk -F'\t' -v c="$1" -v p="$2" -v n="$3" -v m="$m" '$2 == c && $3 == p {
            if (k++ == 0 || $n < lo) lo = $n; if ($n > hi) hi = $n }
        END { if (!k || m == "nan" || m + 0 == 0) print "-"; else printf "%.0f\n", (hi - lo) / 2 / m * 100 }' \
        "$RUN_DIR/results.tsv"
}

# peer CASE: the HAProxy case doing the same work, if it ran.
peer() {
    local p
    case $(base_case "$1") in
        ward-jwt | ward-jwt-rev | haproxy-jwt) p=haproxy-jwt ;;
        *-jwt10k*) p=haproxy-jwt10k && { has_case $p || p=haproxy-jwt; } ;;
        *) p=haproxy ;;
    esac
    if has_case "$p"; then echo "$p"; fi
}

# ratio A B: A / B with two decimals, "-" when either is missing.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f\n", a / b }'
}

report() {
    local proto c rps p50 p99 cpu up err srv_pct gen_pct p
    printf '\nMedian of %s rounds, %s s each, %s connections; load on core %s, servers on core %s.\n' \
        "$ROUNDS" "$DURATION" "$CONNECTIONS" "$LOAD_CPU" "$PROXY_CPU"
    printf 'CPU: user+system time of the proxy process (nginx: master and worker) per request;\n'
    printf 'upstr_us/r: the same for the upstream nginx behind a proxy. srv%%: how busy the servers core was\n'
    printf '(proxy + upstream); gen%%: how busy the load generator was. ±%%: half the range over the rounds,\n'
    printf 'in %% of the median. Ratios are against the HAProxy case doing the same work (peer): haproxy,\n'
    printf 'haproxy-jwt for ward-jwt, haproxy-jwt10k for the ward-jwt10k cases.\n\n'
    printf '%-20s %-6s %8s %5s %8s %8s %5s %10s %5s %10s %5s %5s %6s %8s %8s %8s\n' \
        case proto req/s ±% p50_ms p99_ms ±% cpu_us/req ±% upstr_us/r srv% gen% errors rps/peer p99/peer cpu/peer
    for proto in $PROTOCOLS; do
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
            p=$(peer "$c")
            local rr=- pr=- cr=-
            if [[ -n $p ]]; then
                rr=$(ratio "$rps" "$(column "$p" "$proto" 4)")
                pr=$(ratio "$p99" "$(column "$p" "$proto" 6)")
                cr=$(ratio "$cpu" "$(column "$p" "$proto" 7)")
            fi
            printf '%-20s %-6s %8.0f %5s %8.3f %8.3f %5s %10s %5s %10s %5.0f %5.0f %6d %8s %8s %8s\n' \
                "$c" "$proto" "$rps" "$(spread "$c" "$proto" 4)" "$p50" "$p99" "$(spread "$c" "$proto" 6)" \
                "$cpu" "$(spread "$c" "$proto" 7)" "$up" "$srv_pct" "$gen_pct" "$err" "$rr" "$pr" "$cr"
        done
    done
    notes
    aims
}

# notes: what only some cases measure.
notes() {
    local proto c line
    if has_case ward-redis; then
        printf '\nward-redis, Redis server (%s, not in cpu_us/req or srv%%): ' "$(redis_placement)"
        for proto in $PROTOCOLS; do
            printf '%s %s us/req and %s calls/req; ' "$proto" "$(column ward-redis "$proto" 12)" "$(column ward-redis "$proto" 13)"
        done
        printf '\nward-redis, decisions taken locally instead of in Redis (fallbacks; Redis timeouts; calls skipped\n'
        printf 'with the breaker open), over all rounds of the measured runs:'
        for proto in $PROTOCOLS; do
            awk -F'\t' -v p="$proto" '$2 == "ward-redis" && $3 == p {f += $15; t += $16; b += $17; n += $18}
                END { printf " %s %d of %d requests (%.2f %%; %d; %d);", p, f, n, n ? 100 * f / n : 0, t, b }' \
                "$RUN_DIR/results.tsv"
        done
        printf '\n'
    fi
    line=""
    for c in $CASES; do
        if ! { is_ward "$c" && is_jwt "$c"; }; then continue; fi
        line+="$c"
        for proto in $PROTOCOLS; do line+=" $proto $(column "$c" "$proto" 14)%"; done
        line+="; "
    done
    if [[ -n $line ]]; then printf '\nward token cache hits during the measured runs: %s\n' "$line"; fi
}

# aims: issue 6's aims, from this run's medians.
aims() {
    local proto a b v
    printf '\nAims (issue 6), medians of this run:\n'
    if has_case ward && has_case ward-jwt; then
        for proto in $PROTOCOLS; do
            a=$(column ward-jwt "$proto" 4)
            b=$(column ward "$proto" 4)
            awk -v p="$proto" -v a="$a" -v b="$b" -v ca="$(column ward-jwt "$proto" 7)" -v cb="$(column ward "$proto" 7)" 'BEGIN {
                cost = (1 - a / b) * 100
                printf "  hot-token JWT costs < 5 %% of ward'"'"'s req/s      %-6s %5.1f %% (%.0f vs %.0f req/s; CPU/req %+.1f %%)  %s\n",
                    p, cost, a, b, (ca / cb - 1) * 100, cost < 5 ? "met" : "MISSED" }'
        done
    fi
    if has_case ward-bearer && has_case ward-jwt; then
        # The same requests (the hot token in every one) with and without the JWT stage: what
        # verification from the cache costs, apart from the token's bytes on the wire.
        for proto in $PROTOCOLS; do
            a=$(column ward-jwt "$proto" 4)
            b=$(column ward-bearer "$proto" 4)
            awk -v p="$proto" -v a="$a" -v b="$b" -v ca="$(column ward-jwt "$proto" 7)" -v cb="$(column ward-bearer "$proto" 7)" 'BEGIN {
                cost = (1 - a / b) * 100
                printf "    the JWT stage alone (vs ward-bearer)        %-6s %5.1f %% (%.0f vs %.0f req/s; CPU/req %+.1f %%)  %s\n",
                    p, cost, a, b, (ca / cb - 1) * 100, cost < 5 ? "under 5 %" : "over 5 %" }'
        done
    fi
    if has_case ward-jwt && has_case ward-jwt-rev; then
        for proto in $PROTOCOLS; do
            awk -v p="$proto" -v a="$(column ward-jwt-rev "$proto" 4)" -v b="$(column ward-jwt "$proto" 4)" \
                -v sa="$(spread ward-jwt-rev "$proto" 4)" -v sb="$(spread ward-jwt "$proto" 4)" 'BEGIN {
                d = (a / b - 1) * 100; noise = (sa > sb ? sa : sb)
                printf "  revocation check within noise (issue 7)    %-6s %+5.1f %% (%.0f vs %.0f req/s; spread %s %%)  %s\n",
                    p, d, a, b, noise, (d >= -noise || d >= -1) ? "met" : "MISSED" }'
        done
    fi
    if has_case ward-jwt && has_case haproxy-jwt; then
        for proto in $PROTOCOLS; do
            v=$(ratio "$(column ward-jwt "$proto" 4)" "$(column haproxy-jwt "$proto" 4)")
            awk -v p="$proto" -v v="$v" 'BEGIN { printf "  ward-jwt >= 3x haproxy-jwt req/s            %-6s %5.2fx  %s\n", p, v, v >= 3 ? "met" : "MISSED" }'
        done
    fi
    local c10 peer10
    for c10 in ward-jwt10k ward-jwt10k-nocache; do
        has_case "$c10" || continue
        peer10=$(peer "$c10")
        [[ -n $peer10 ]] || continue
        for proto in $PROTOCOLS; do
            v=$(ratio "$(column "$c10" "$proto" 4)" "$(column "$peer10" "$proto" 4)")
            awk -v c="$c10" -v pc="$peer10" -v p="$proto" -v v="$v" \
                'BEGIN { printf "  %s >= 1.5x %s req/s  %-6s %5.2fx  %s\n", c, pc, p, v, v >= 1.5 ? "met" : "MISSED" }'
        done
    done
    if has_case ward && has_case ward-redis; then
        for proto in $PROTOCOLS; do
            a=$(column ward-redis "$proto" 6)
            b=$(column ward "$proto" 6)
            awk -v p="$proto" -v a="$a" -v b="$b" 'BEGIN {
                d = a - b
                printf "  Redis limiter adds <= 0.3 ms at p99          %-6s %+6.3f ms (%.3f vs %.3f ms)  %s\n",
                    p, d, a, b, d <= 0.3 ? "met" : "MISSED" }'
        done
    fi
}

machine() {
    printf 'machine: %s, %s cores, %s, load average %s\n' \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(nproc)" "$(uname -sr)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'tools: %s; %s; %s; %s; %s\n' \
        "$({ wrk -v 2>&1 || true; } | awk 'NR == 1 {print $1, $2}')" "$(h2load --version 2>&1 | awk 'NR == 1')" \
        "$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $1, $2, $3}')" "$(nginx -v 2>&1)" "$(openssl version)"
    if any_case is_ward; then printf 'ward: %s (%s)\n' "$("$WARD_BIN" --version 2>&1 | head -1)" "$WARD_BIN"; fi
    if has_case ward-redis; then printf 'redis: %s\n' "$(redis-cli -u "$REDIS_URL" info server 2>/dev/null | grep -m1 '^redis_version' | tr -d '\r')"; fi
    printf 'date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    # Our own servers are idle now: a load above half a core is someone else.
    if awk '{exit !($1 > 0.5)}' /proc/loadavg; then
        log "warning: the machine is busy (load $(cut -d' ' -f1 /proc/loadavg)): expect noisy figures"
    fi
}

# write_results: RESULTS.csv, one line per measured run, and RESULTS.txt, the printed report.
write_results() {
    [[ -n $RESULTS ]] || return 0
    mkdir -p "$(dirname "$RESULTS")"
    {
        echo round,case,proto,rps,p50_ms,p99_ms,cpu_us_per_req,upstream_us_per_req,errors,server_core_pct,generator_core_pct,redis_us_per_req,redis_calls_per_req,cache_hit_pct,redis_fallbacks,redis_timeouts,redis_breaker_open,requests
        awk -F'\t' -v OFS=, '{ for (i = 1; i <= NF; i++) if ($i == "-") $i = ""; print }' "$RUN_DIR/results.tsv"
    } >"$RESULTS.csv"
    cp "$RUN_DIR/report.txt" "$RESULTS.txt"
    log "results in $RESULTS.csv and $RESULTS.txt"
}

main() {
    ((ROUNDS > 0 && DURATION > 0)) || die "ROUNDS and DURATION must be positive"
    check_cases
    ensure_tools wrk:wrk h2load:nghttp2-client
    ensure_ward
    start_servers 15
    if has_case ward-redis; then
        REDIS_PID=$(redis-cli -u "$REDIS_URL" info server 2>/dev/null | awk -F: '/^process_id:/ {print $2}' | tr -d '\r')
        [[ -n $REDIS_PID && -r /proc/$REDIS_PID/stat ]] || REDIS_PID=
    fi
    local report=$RUN_DIR/report.txt
    {
        machine
        check_equivalence
        check_jwt
        check_redis
        prime_caches
    } >"$report"
    cat "$report"
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
    report >"$RUN_DIR/report-table.txt"
    cat "$RUN_DIR/report-table.txt"
    cat "$RUN_DIR/report-table.txt" >>"$report"
    if has_case ward-redis; then
        local fb
        fb=$(ward_metric ward-redis ward_rate_limit_fallbacks_total)
        printf '\nward-redis fell back to local counting %s times during the whole run, warm-ups included.\n' "$fb" | tee -a "$report"
    fi
    write_results
}

# "; exit" on the same line: bash never reads past it, even if the file is
# edited during a run.
main "$@"; exit
