"""Validates OCSF Detection Findings with py-ocsf-models (pydantic models of the OCSF schema,
published on PyPI by Prowler; pydantic 1 or 2). Argument: a JSON-lines file of OCSF events. Prints one JSON
object per line: {"uid", "errors": ["loc: message"], "unknown": ["dotted.path"]} where
`unknown` lists attributes we sent that the model does not define (pydantic ignores them, so
they are found by comparing what was sent with what the model kept)."""

import json
import sys

import pydantic
from pydantic import ValidationError
from py_ocsf_models.events.findings.detection_finding import DetectionFinding

V1 = pydantic.VERSION.startswith("1.")


def parse(event):
    if V1:
        model = DetectionFinding.parse_obj(event)
        return json.loads(model.json(exclude_unset=True))
    model = DetectionFinding.model_validate(event)
    return model.model_dump(mode="json", exclude_unset=True)


def unknown(sent, kept, path):
    """Paths present in `sent` but not in `kept` (the validated model's own dump)."""
    out = []
    if isinstance(sent, dict) and isinstance(kept, dict):
        for k, v in sent.items():
            p = f"{path}.{k}" if path else k
            if k not in kept:
                out.append(p)
            elif k != "unmapped":
                out.extend(unknown(v, kept[k], p))
    elif isinstance(sent, list) and isinstance(kept, list):
        for s, k in zip(sent, kept):
            out.extend(unknown(s, k, path + "[]"))
    return out


with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        event = json.loads(line)
        result = {"uid": event.get("metadata", {}).get("uid"), "errors": [], "unknown": []}
        try:
            result["unknown"] = sorted(set(unknown(event, parse(event), "")))
        except ValidationError as e:
            result["errors"] = sorted({".".join(str(x) for x in err["loc"]) + ": " + err["msg"] for err in e.errors()})
        print(json.dumps(result), flush=True)
