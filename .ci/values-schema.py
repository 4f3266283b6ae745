"""Validate the chart's values against helm/ward/values.schema.json, as `helm install` would
(helm-render does not): the chart's values.yaml merged with each shipped values file must pass,
and each deliberately bad file under helm/ward/tests/values/ must fail with the message its
`# expect:` line names. Prints one line per file; exits 1 on any surprise."""

import sys
from pathlib import Path

import jsonschema
import yaml

CHART = Path("helm/ward")


def merge(base, override):
    """Helm's coalescing: maps merge key by key, anything else replaces, null deletes."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    out = dict(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(base.get(k), v)
    return out


def errors(validator, values):
    found = []
    for e in sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        found.append(f"{path}: {e.message}")
    return found


def main():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    ok = True

    good = [("values.yaml", {})] + [
        (str(p), yaml.safe_load(p.read_text()) or {}) for p in sorted((CHART / "ci").glob("*.yaml"))
    ]
    for name, override in good:
        errs = errors(validator, merge(defaults, override))
        if errs:
            ok = False
            print(f"FAIL {name}: the schema refuses a shipped values file:")
            for e in errs:
                print(f"       {e}")
        else:
            print(f"ok   {name}: valid")

    bad = sorted((CHART / "tests/values").glob("bad-*.yaml"))
    if not bad:
        ok = False
        print("FAIL no deliberately bad values files found")
    for p in bad:
        text = p.read_text()
        expect = [l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("# expect:")]
        errs = errors(validator, merge(defaults, yaml.safe_load(text) or {}))
        if not errs:
            ok = False
            print(f"FAIL {p}: the schema accepts it")
        elif expect and not any(expect[0] in e for e in errs):
            ok = False
            print(f"FAIL {p}: refused, but not with {expect[0]!r}: {errs}")
        else:
            print(f"ok   {p}: refused: {errs[0]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
