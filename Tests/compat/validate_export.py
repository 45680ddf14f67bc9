"""Validates `gateway-train export` output against docs/export-row.schema.json.

Usage: python3 validate_export.py SCHEMA FORMAT FILE.jsonl
FORMAT is jsonl, trl-sft, verl-sft or verl-rl (the schema's $defs). Prints a JSON object
{"rows": N, "errors": [...]} and exits 1 when any row fails (or the file is empty).
Driven by the Swift export tests and scripts/check-export-loaders.sh.
"""
import json
import sys

import jsonschema

schema_path, fmt, path = sys.argv[1:4]
schema = json.load(open(schema_path, encoding="utf-8"))
jsonschema.Draft202012Validator.check_schema(schema)
row_schema = dict(schema)
row_schema["$ref"] = "#/$defs/" + fmt
if fmt not in schema["$defs"]:
    sys.exit(f"no $defs/{fmt} in {schema_path}")
validator = jsonschema.Draft202012Validator(row_schema)
errors, rows = [], 0
with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
        rows += 1
        for e in validator.iter_errors(json.loads(line)):
            errors.append(f"line {n}: {'/'.join(map(str, e.absolute_path)) or '(row)'}: {e.message}")
print(json.dumps({"rows": rows, "errors": errors[:50]}))
sys.exit(1 if errors or rows == 0 else 0)
