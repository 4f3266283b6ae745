#!/usr/bin/env python3
"""Throwaway ES256 key and tokens for the JWT cases of bench/proxy.sh and bench/cost.sh.

The private key lives only in this process's memory: what is written is the public side (a JWK
Set for ward, a PEM public key for HAProxy's jwt_verify) and the signed tokens. Each run makes
a new key, so nothing here is worth keeping.

Usage: jwt.py OUT_DIR [COUNT]
Writes into OUT_DIR:
  jwks.json        the public key as a JWK Set (kid "bench-1"), for ward's jwks.file
  pubkey.pem       the same key as a PEM SubjectPublicKeyInfo, for HAProxy
  token-hot.txt    one valid token
  tokens.txt       COUNT (default 10000) distinct valid tokens, one a line
  bad-*.txt        tokens each proxy must refuse with 401:
                   forged (signed by another key, same kid), tampered (payload changed after
                   signing), expired, wrong-aud, wrong-iss, alg-none
Needs the `cryptography` package (Debian: python3-cryptography).
"""

import base64
import json
import os
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://issuer.bench.test"
AUDIENCE = "ward-bench"
KID = "bench-1"
LIFETIME = 6 * 3600  # longer than any run: tokens must not expire mid-load


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def sign(key, header, claims) -> str:
    signing_input = segment(header) + "." + segment(claims)
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    # JWS wants the raw r || s, 32 bytes each (RFC 7518 section 3.4), not DER.
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) == 3 else 10000
    os.makedirs(out, exist_ok=True)

    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    nums = pub.public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "kid": KID,
        "alg": "ES256",
        "use": "sig",
        "x": b64url(nums.x.to_bytes(32, "big")),
        "y": b64url(nums.y.to_bytes(32, "big")),
    }
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk]}, f)
    with open(os.path.join(out, "pubkey.pem"), "wb") as f:
        f.write(
            pub.public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )

    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT", "kid": KID}

    def claims(sub, **over):
        c = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + LIFETIME}
        c.update(over)
        return c

    with open(os.path.join(out, "token-hot.txt"), "w") as f:
        f.write(sign(key, header, claims("hot-user")) + "\n")
    with open(os.path.join(out, "tokens.txt"), "w") as f:
        for i in range(count):
            f.write(sign(key, header, claims(f"user-{i:05d}", jti=f"t{i}")) + "\n")

    good = sign(key, header, claims("victim"))
    h, p, s = good.split(".")
    bad = {
        "forged": sign(other, header, claims("mallory")),
        "tampered": h + "." + segment(claims("mallory")) + "." + s,
        "expired": sign(key, header, claims("late", iat=now - 7200, exp=now - 3600)),
        "wrong-aud": sign(key, header, claims("elsewhere", aud="another-api")),
        "wrong-iss": sign(key, header, claims("elsewhere", iss="https://evil.bench.test")),
        "alg-none": segment({"alg": "none", "typ": "JWT", "kid": KID})
        + "."
        + segment(claims("mallory"))
        + ".",
    }
    for name, token in bad.items():
        with open(os.path.join(out, f"bad-{name}.txt"), "w") as f:
            f.write(token + "\n")


if __name__ == "__main__":
    main()
