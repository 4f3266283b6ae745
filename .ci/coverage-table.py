#!/usr/bin/env python3
"""Line coverage per security-critical module from `cargo llvm-cov --json --summary-only`.

Prints a Markdown table (module, lines, covered, %) and the total of those modules, and exits 1
when the total is under COVERAGE_MIN percent (default 85).
"""
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = [
    "src/proxy/pipeline.rs",
    "src/proxy/stage/*.rs",
    "src/proxy/guard.rs",
    "src/policy/compile/*.rs",
    "src/policy/auth/*.rs",
    "src/identity/*.rs",
    "src/payments/validation.rs",
    "src/payments/auth.rs",
    "src/payments/audit.rs",
    "src/payments/webhook.rs",
]


def main():
    data = json.loads(pathlib.Path(sys.argv[1]).read_text())
    files = {}
    for f in data["data"][0]["files"]:
        rel = os.path.relpath(f["filename"], ROOT)
        files[rel] = f["summary"]["lines"]
    rows, total, covered = [], 0, 0
    for pattern in MODULES:
        for path in sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern)):
            s = files.get(path)
            if s is None:
                # Only module declarations and re-exports: no line of code to count.
                text = (ROOT / path).read_text()
                if "fn " in text:
                    sys.exit(f"coverage: {path} has code but no coverage data")
                continue
            rows.append((path, s["count"], s["covered"]))
            total += s["count"]
            covered += s["covered"]
    print("| module | lines | covered | % |")
    print("|---|---:|---:|---:|")
    for path, n, c in rows:
        print(f"| `{path}` | {n} | {c} | {100 * c / n:.1f} |")
    pct = 100 * covered / total
    print(f"| **all of the above** | {total} | {covered} | **{pct:.1f}** |")
    want = float(os.environ.get("COVERAGE_MIN", "85"))
    if pct < want:
        print(f"coverage: FAIL ({pct:.1f} % of lines, under {want:g} %)")
        return 1
    print(f"coverage: PASS ({pct:.1f} % of lines, at least {want:g} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
