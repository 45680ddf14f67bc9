"""Validates JSON documents the gateway sent against OpenAI's own OpenAPI schemas.

Usage: python3 validate_openapi.py path/to/openapi.json < lines
Each stdin line: {"schema": "<components/schemas name>", "instance": <json>}.
The spec marks nullable fields OpenAPI-3.0 style (`nullable: true`); they are rewritten to JSON
Schema (`type: [T, "null"]`) before validation. Prints one JSON report; exit 1 if any fail.
"""
import copy
import json
import sys

from jsonschema import Draft202012Validator


def denull(node):
    if isinstance(node, dict):
        out = {k: denull(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True:
            t = out.get("type")
            if isinstance(t, str):
                out["type"] = [t, "null"]
            elif isinstance(t, list) and "null" not in t:
                out["type"] = t + ["null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = out["enum"] + [None]
        return out
    if isinstance(node, list):
        return [denull(v) for v in node]
    return node


spec = json.load(open(sys.argv[1]))
components = denull(copy.deepcopy(spec["components"]))
report, failed = [], 0
for line in sys.stdin:
    if not line.strip():
        continue
    item = json.loads(line)
    validator = Draft202012Validator({"$ref": "#/components/schemas/" + item["schema"], "components": components})
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(item["instance"])]
    failed += bool(errors)
    report.append({"schema": item["schema"], "errors": errors[:5]})
print(json.dumps({"checked": len(report), "failed": failed, "report": report}))
sys.exit(1 if failed else 0)
