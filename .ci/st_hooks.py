"""Schemathesis hooks for .ci/api-conformance: a real access token from the demo's own login.

Tokens come from POST /v1/auth/login through the proxy with the demo tenant's generated password
(passed in WARD_ST_PASSWORD by the driver). A token is reused for 10 minutes; any 401 makes
schemathesis log in again and replay the request once, so a generated logout (which revokes the
session) or password change does not leave the rest of the run unauthenticated.
"""
import json
import os
import ssl
import urllib.request

import schemathesis

BASE = os.environ["WARD_ST_BASE"]
# The demo's certificate is made at start and printed nowhere: trust it without verification.
_TLS = ssl._create_unverified_context()  # noqa: S323 (loopback, a certificate made this run)


def login():
    body = json.dumps(
        {"tenant": "demo", "email": "admin@demo.example", "password": os.environ["WARD_ST_PASSWORD"]}
    ).encode()
    req = urllib.request.Request(
        BASE + "/v1/auth/login", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, context=_TLS, timeout=30) as r:
        return json.load(r)["access_token"]


@schemathesis.auth(refresh_interval=600).skip_for(path_regex=r"^/v1/auth/(login|refresh)$")
class DemoAdmin:
    def get(self, case, ctx):
        return login()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
