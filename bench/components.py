#!/usr/bin/env python3
"""Where a proxy's work goes per request, by component: TLS, HTTP/1, HTTP/2, policy stages, JWT,
the upstream client, allocation, the runtime, the request log, the kernel...

Used by bench/cost.sh (instructions, from two callgrind dumps) and bench/profile.sh (CPU samples,
from perf report). Each function is put in one component by the first rule below that matches
its name (or, for C code without a Rust path, its object file), so the components add up to the
whole: self cost (exclusive), never inclusive.

  components.py callgrind SHORT.out LONG.out REQUESTS [TOP]
      SHORT and LONG are callgrind dumps of the same server over two runs that differ only by
      REQUESTS requests (same connections, so handshakes cancel out): prints instructions per
      request by component, then the TOP (20) functions by self instructions per request.
  components.py inclusive SHORT.out LONG.out REQUESTS [TOP]
      the same two dumps through `callgrind_annotate --inclusive=yes`: the TOP (30) functions by
      inclusive instructions per request, leaving out the trunk every request runs under (the
      runtime's poll loop: anything above 90 % of the total).
  components.py perf REPORT.txt US_PER_REQ [TOP]
      REPORT.txt is `perf report --no-children --sort dso,sym --stdio -g none` of one process;
      US_PER_REQ its CPU time per request: prints the share and microseconds per request by
      component, then the TOP functions.
Output is Markdown tables.
"""

import re
import sys
from collections import defaultdict

# (component, pattern on "object:function"); first match wins. Rust paths appear as in the
# symbol, generic parameters included (`<hyper::proto::h1::... as ...>::poll`), so a pattern
# matches anywhere in the name; the order puts the specific before the general.
RULES = [
    ("kernel", r"^\[kernel|\[k\]"),
    ("clock reads (vDSO)", r"^\[vdso\]|__vdso_"),
    ("framing guard (ward::proxy::guard)", r"ward::proxy::guard"),
    ("JWT (parse, ES256 verify, token cache)",
     r"jsonwebtoken::|\bp256::|\becdsa::|elliptic_curve::|primeorder::|crypto_bigint::|ward::identity::"
     r"|ward::proxy::token_cache|ward::proxy::stage::authn|base64::|sha2::|:jwt_|libcrypto.*(ecdsa|ec_)"),
    ("TLS (ward: rustls, ring; peers: OpenSSL)",
     r"rustls::|tokio_rustls::|\bring::|ring_core_|aws_lc|libssl\.so|libcrypto\.so|:ssl_sock_|:ngx_ssl_"),
    ("HTTP/2 framing and HPACK", r"\bh2::|hyper::proto::h2|:h2_|:hpack_|:h2c_|:ngx_http_v2_|:ngx_http_huff_"),
    ("HTTP/1 framing", r"hyper::proto::h1|httparse::|:h1_|:ngx_http_parse_"),
    ("upstream client (ward: hyper client conn, own pool)",
     r"hyper_util::client|hyper::client|ward::proxy::upstream|:ngx_http_upstream_|:ngx_http_proxy_"),
    ("Redis client", r"\bredis::|\bcombine::|ward::redis_link"),
    ("request log (ward: tracing, serde_json)",
     r"tracing_subscriber::|tracing_serde|tracing_core::|tracing::|serde_json::|ward::telemetry"
     r"|:sess_build_logline|:ngx_http_log_"),
    ("policy stages (ward pipeline)", r"ward::"),
    ("HTTP header maps (http crate)", r"\bhttp::"),
    ("metrics (prometheus)", r"prometheus::"),
    ("async runtime (tokio, mio)", r"\btokio::|tokio_util::|\bmio::|futures_|hyper_util::rt|hyper_util::server|hyper_util::common"
     r"|:fd_update_|:_do_poll|:process_runnable_tasks|:run_tasks_|:ngx_epoll_|:ngx_process_events"),
    ("allocation (ward: mimalloc)",
     r"\bmi_|_mi_|mimalloc|__rust_alloc|__rust_dealloc|__rust_realloc|alloc::alloc::|:malloc|:free\b"
     r"|:realloc|:calloc|:_int_malloc|:_int_free|:cfree|:pool_alloc|:pool_free|:__pool_|:ngx_palloc"
     r"|:ngx_pnalloc|:ngx_pcalloc|:ngx_pfree"),
    ("memcpy, memmove, memset (libc)", r":__mem(cpy|move|set|cmp)|:mem(cpy|move|set|cmp)"),
    ("formatting (core::fmt, itoa)", r"core::fmt|itoa::|alloc::fmt|<alloc::string::String as core::fmt"),
    ("hyper (other)", r"hyper::"),
    ("bytes, strings, collections (Rust std)",
     r"bytes::|core::str|alloc::|core::|std::|hashbrown::|<std::hash|smallvec::|indexmap::"),
    ("libc (other)", r"libc\.so|libc-|ld-linux"),
]
COMPILED = [(name, re.compile(p)) for name, p in RULES]


def component(obj: str, fn: str) -> str:
    key = f"{obj}:{fn}"
    for name, rx in COMPILED:
        if rx.search(key):
            return name
    if obj and obj.endswith(("haproxy", "nginx")):
        return f"{obj.rsplit('/', 1)[-1]} (other)"
    return "other"


def read_callgrind(path):
    """Self cost (first event) per (object, function) of one callgrind output file."""
    names = {"ob": {}, "fn": {}, "fl": {}}
    self_cost = defaultdict(int)
    ob = fn = ""
    positions = 1
    skip_next_cost = False
    total = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip_next_cost:
                    skip_next_cost = False  # the inclusive cost of a call: not self
                    continue
                parts = line.split()
                if len(parts) > positions:
                    self_cost[(ob, fn)] += int(parts[positions])
                continue
            key, _, value = line.partition("=")
            if key in ("ob", "fn", "cob", "cfn", "fl", "fi", "fe", "cfi", "cfl"):
                table = names["ob" if key in ("ob", "cob") else "fn" if key in ("fn", "cfn") else "fl"]
                m = re.match(r"\((\d+)\)(?: (.*))?$", value)
                if m:
                    if m.group(2) is not None:
                        table[m.group(1)] = m.group(2)
                    name = table.get(m.group(1), value)
                else:
                    name = value
                if key == "ob":
                    ob = name
                elif key == "fn":
                    fn = name
            elif key == "calls":
                skip_next_cost = True
            elif line.startswith("positions:"):
                positions = len(line.split()[1:])
            elif line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
    return self_cost, total


def table(rows, headers):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def short(fn: str, width: int = 110) -> str:
    fn = fn.replace("|", "\\|")
    return fn if len(fn) <= width else fn[: width - 1] + "…"


def callgrind_main(short_path, long_path, requests, top):
    a, ta = read_callgrind(short_path)
    b, tb = read_callgrind(long_path)
    diff = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
    total = sum(diff.values())
    by = defaultdict(int)
    for (ob, fn), v in diff.items():
        by[component(ob, fn)] += v
    rows = [(name, f"{v / requests:,.0f}", f"{100 * v / total:.1f} %")
            for name, v in sorted(by.items(), key=lambda kv: -kv[1]) if abs(v) / total >= 0.0005]
    rows.append(("**total**", f"**{total / requests:,.0f}**", "100 %"))
    print(table(rows, ["component (self cost)", "instructions/request", "share"]))
    if ta is not None and tb is not None and (tb - ta) != total:
        print(f"\n(dump totals differ by {(tb - ta) / requests:,.0f} instructions/request from the sum of self costs)")
    print()
    fns = sorted(diff.items(), key=lambda kv: -kv[1])[:top]
    print(table([(short(fn), component(ob, fn), f"{v / requests:,.0f}") for (ob, fn), v in fns],
                ["function (self)", "component", "instructions/request"]))


ANNOTATE_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[(.*)\])?$")


def read_inclusive(path):
    """Inclusive cost per function of one dump, as callgrind_annotate computes it."""
    import subprocess

    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    costs, on = {}, False
    for line in out.splitlines():
        if "file:function" in line:
            on = True
            continue
        m = ANNOTATE_LINE.match(line) if on else None
        if m:
            fn = m.group(2).split(":", 1)[-1] if m.group(2).startswith(("???:", "./", "/")) else m.group(2)
            costs[(m.group(3) or "", fn)] = int(m.group(1).replace(",", ""))
    return costs


def inclusive_main(short_path, long_path, requests, top):
    a, _ = read_callgrind(short_path)
    b, _ = read_callgrind(long_path)
    total = sum(b.values()) - sum(a.values())
    ia = read_inclusive(short_path)
    ib = read_inclusive(long_path)
    diff = {k: ib[k] - ia.get(k, 0) for k in ib}
    rows = [(short(fn), component(ob, fn), f"{v / requests:,.0f}", f"{100 * v / total:.1f} %")
            for (ob, fn), v in sorted(diff.items(), key=lambda kv: -kv[1]) if v <= 0.9 * total][:top]
    print(table(rows, ["function (inclusive)", "component", "instructions/request", "of total"]))


PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")


def perf_main(report_path, us_per_req, top):
    by = defaultdict(float)
    fns = []
    with open(report_path, errors="replace") as f:
        for line in f:
            m = PERF_LINE.match(line)
            if not m:
                continue
            pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
            obj = "[kernel]" if kind == "k" else dso
            comp = component(obj, sym)
            by[comp] += pct
            fns.append((pct, sym, comp))
    total = sum(by.values())
    rows = [(name, f"{v:.1f} %", f"{v / 100 * us_per_req:.1f}")
            for name, v in sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.05]
    rows.append(("**total**", f"**{total:.1f} %**", f"**{total / 100 * us_per_req:.1f}**"))
    print(table(rows, ["component (self time)", "share of samples", "µs/request"]))
    print()
    fns.sort(key=lambda x: -x[0])
    print(table([(short(s), c, f"{p:.2f} %") for p, s, c in fns[:top]],
                ["function (self)", "component", "share"]))


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "callgrind":
        callgrind_main(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                       int(sys.argv[5]) if len(sys.argv) > 5 else 20)
    elif len(sys.argv) >= 5 and sys.argv[1] == "inclusive":
        inclusive_main(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                       int(sys.argv[5]) if len(sys.argv) > 5 else 30)
    elif len(sys.argv) >= 4 and sys.argv[1] == "perf":
        perf_main(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 25)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
