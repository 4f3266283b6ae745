"""Start `target/release/ward demo` on free loopback ports in a directory, for the CI scripts that
test a running ward (api-conformance, tls-scan). Standard library only."""
import pathlib
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
WARD = ROOT / "target" / "release" / "ward"


class Demo:
    """A running demo: `proxy` (https://localhost:PORT), `port`, `admin` (http://127.0.0.1:PORT),
    `password` (the demo tenant's), `policy` (its editable policy file) and `payments` (the
    bundled service itself, http://127.0.0.1:PORT)."""

    def __init__(self, tmp: pathlib.Path):
        if not WARD.exists():
            sys.exit(f"{WARD} is missing (cargo build --release first)")
        self.log_path = tmp / "demo.log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [WARD, "demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--dir", tmp / "demo"],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
        found = {}
        deadline = time.time() + 60
        for line in self.proc.stdout:
            t = line.strip()
            for key in ("proxy:", "admin:", "password:", "policy:", "payments:"):
                if t.startswith(key):
                    found[key[:-1]] = t[len(key):].split()[0]
            if len(found) == 5 or time.time() > deadline:
                break
        if len(found) != 5:
            self.stop()
            sys.exit(f"the demo did not start (see {self.log_path})")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.proxy = found["proxy"].rstrip("/")
        self.port = int(self.proxy.rsplit(":", 1)[1])
        self.admin = found["admin"].removesuffix("/metrics")
        self.password = found["password"]
        self.policy = pathlib.Path(found["policy"])
        self.payments = found["payments"].rstrip("/")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
