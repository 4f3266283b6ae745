#!/usr/bin/env python3
"""Seed the fuzz corpora (fuzz/corpus/<target>/) from the project's own test inputs.

guard:  every byte-string request literal in the guard's unit tests and the smuggling tests;
policy: every shipped policy file and every inline test policy (`r#"` strings holding `version:`);
jwks:   the JWKS shapes of the key-set tests.
Also writes corpus/policy.dict, the policy schema's field names, for the policy target.
The structured targets (jwt, bearer, ...) start from their dictionaries (fuzz/dict/). Seeds are
named by content hash, so running this again adds nothing twice. Standard library only.
"""
import ast
import hashlib
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def byte_literals(path):
    text = path.read_text()
    for m in re.finditer(r'b"((?:[^"\\]|\\.)*)"', text):
        body = m.group(1)
        if not re.match(r"[A-Z]+ ", body):
            continue
        yield ast.literal_eval('b"' + body.replace("\\0", "\\x00") + '"')


def main():
    n = {}
    for src in ["src/proxy/guard.rs", "tests/proxy_smuggling.rs", "tests/proxy_http.rs"]:
        p = ROOT / src
        if p.exists():
            for req in byte_literals(p):
                put("guard", req)
                n["guard"] = n.get("guard", 0) + 1
    yamls = [*ROOT.glob("policies/**/*.yaml"), *ROOT.glob("bench/*policy*.yaml"),
             *ROOT.glob("helm/ward/files/policies/*.yaml")]
    for p in yamls:
        put("policy", p.read_bytes())
        n["policy"] = n.get("policy", 0) + 1
    for p in [*ROOT.glob("tests/*.rs"), *ROOT.glob("src/policy/*.rs")]:
        for m in re.finditer(r'r#"(.*?)"#', p.read_text(), re.S):
            if "version:" in m.group(1) and "routes" in m.group(1):
                put("policy", m.group(1).encode())
                n["policy"] = n.get("policy", 0) + 1
    x = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"
    for keys in [
        [{"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": x}],
        [{"kty": "OKP", "crv": "Ed25519", "kid": "a", "alg": "EdDSA", "use": "sig", "x": x},
         {"kty": "OKP", "crv": "Ed25519", "x": x}],
        [{"kty": "EC", "crv": "P-256", "kid": "e", "x": x, "y": x}],
        [{"kty": "RSA", "kid": "r", "n": "AQAB" * 86, "e": "AQAB"}],
        [{"kty": "oct", "k": "c2VjcmV0"}],
    ]:
        put("jwks", json.dumps({"keys": keys}).encode())
        n["jwks"] = n.get("jwks", 0) + 1
    schema = json.loads((ROOT / "policies/ward-policy.schema.json").read_text())
    words, values = set(), set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "properties" and isinstance(v, dict):
                    words.update(v)
                if k == "enum" and isinstance(v, list):
                    values.update(str(e) for e in v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    CORPUS.mkdir(parents=True, exist_ok=True)
    entries = [f"{w}:" for w in sorted(words)] + sorted(values)
    (CORPUS / "policy.dict").write_text("".join(f'"{e}"\n' for e in entries if '"' not in e and "\\" not in e))
    print("seeded: " + ", ".join(f"{k} {v}" for k, v in sorted(n.items())))


if __name__ == "__main__":
    main()
