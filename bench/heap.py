#!/usr/bin/env python3
"""Where a server's memory per idle connection goes, from a valgrind DHAT profile (bench/idle.sh
with HEAP=1): the heap at its peak (t-gmax, while the N idle connections are held), split by
allocation site.

  heap.py DHAT.json N [TOP]

A site is the first frame of its stack that is not allocation machinery (malloc, Vec, Box, Arc,
BytesMut growth...). Only sites with at least N/2 blocks live at the peak count as per-connection
(a connection's buffers, its task, its TLS state); the rest is process-wide state (policy,
metrics, runtime), reported as one line and not divided. Prints a Markdown table of bytes per
connection by component, then the TOP (15) sites.

Names come from the binary's symbols: the linker may fold identical functions of two crates into
one symbol, so a site can carry the other crate's name (over HTTP/2 the read buffer of h2's
framing, tokio-util's, shows as hyper's HTTP/1.1 `poll_read_from_io`). The component of such a
site is the protocol's, as the table of the other protocol shows.
"""

import json
import re
import sys
from collections import defaultdict

# Frames that only allocate on someone else's behalf.
MACHINERY = re.compile(
    r"\b(malloc|calloc|realloc|posix_memalign|aligned_alloc|memalign)\b|__rust_|alloc::|"
    r"core::ptr::|<alloc::|RawVec|std::sys::|hashbrown::|bytes::bytes_mut::|bytes::bytes::|"
    r"<bytes::|core::iter::|core::ops::|\?\?\?$|^0x[0-9A-F]+: \?\?\?"
)

# (component, pattern on the site's frame); first match wins.
RULES = [
    ("hyper HTTP/1.1 connection (read and write buffers)", r"hyper::proto::h1|hyper::server::conn::http1"),
    ("hyper HTTP/2 glue", r"hyper::proto::h2|hyper::server::conn::http2"),
    ("h2: framing buffers, HPACK tables, streams", r"\bh2::|\bslab::|tokio_util::codec"),
    ("TLS state and buffers (rustls, ring)", r"rustls::|tokio_rustls::|\bring::"),
    ("connection task (its future: ward's connection state)", r"tokio::runtime::task|tokio::task::spawn|tokio::spawn"),
    ("socket registration (tokio, mio)", r"tokio::runtime::io|tokio::net::|\bmio::"),
    ("timers (tokio)", r"tokio::time|tokio::runtime::time"),
    ("ward (framing guard, connection bookkeeping)", r"\bward::"),
    ("hyper-util (graceful shutdown watcher)", r"hyper_util::"),
]


def site(frames):
    for f in frames:
        name = f.split(": ", 1)[-1]
        if not MACHINERY.search(name):
            return name
    return frames[-1] if frames else "?"


def component(name):
    for comp, pattern in RULES:
        if re.search(pattern, name):
            return comp
    return "other"


def short(name):
    name = re.sub(r" \(in [^)]*\)$", "", name)
    return name if len(name) <= 110 else name[:107] + "..."


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    with open(path) as f:
        d = json.load(f)
    ftbl = d["ftbl"]
    by_site = defaultdict(lambda: [0, 0])
    shared = 0
    for pp in d["pps"]:
        gb, gbk = pp.get("gb", 0), pp.get("gbk", 0)
        if not gb:
            continue
        if gbk < n / 2:
            shared += gb
            continue
        s = site([ftbl[i] for i in pp["fs"]])
        by_site[s][0] += gb
        by_site[s][1] += gbk
    by_comp = defaultdict(int)
    for s, (gb, _) in by_site.items():
        by_comp[component(s)] += gb
    total = sum(by_comp.values())
    print(f"Heap at its peak (valgrind DHAT, t-gmax) with {n} idle connections, per connection:\n")
    print("| component | KiB per connection | share |")
    print("| --- | ---: | ---: |")
    for comp, b in sorted(by_comp.items(), key=lambda kv: -kv[1]):
        print(f"| {comp} | {b / n / 1024:.2f} | {100 * b / total:.1f} % |")
    print(f"| **per-connection heap** | **{total / n / 1024:.2f}** | 100 % |")
    print(f"\nProcess-wide heap at the peak (sites with fewer than {n // 2} blocks live), not divided: "
          f"{shared / 1024 / 1024:.1f} MiB.\n")
    print("| allocation site (first frame past the allocator) | component | bytes per connection | blocks per connection |")
    print("| --- | --- | ---: | ---: |")
    for s, (gb, gbk) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"| `{short(s)}` | {component(s)} | {gb / n:,.0f} | {gbk / n:.1f} |")


if __name__ == "__main__":
    main()
