#!/usr/bin/env python3
"""Checks the Kubernetes manifests offline, as `cargo xtask test` runs it (project venv).

For each kustomize overlay: render it with `kubectl kustomize`, validate every object strictly
against the Kubernetes schemas (`kubernetes-validate --strict`: unknown fields are errors), and
run `checkov` on the rendered objects; every checkov finding must be suppressed next to the
object with its reason (`checkov.io/skipN` annotations), so any new one fails here.

A negative control runs first: a copy of an overlay's DaemonSet with a misspelt field must be
rejected, or the strict validation would be proving nothing.

Usage: deploy/check.py  (exit 0: all clean; 1: what is wrong, on stderr)
"""

import json
import pathlib
import subprocess
import sys
import tempfile

VENV_BIN = pathlib.Path("/opt/peregrine/py/bin")
DEPLOY = pathlib.Path(__file__).resolve().parent
OVERLAYS = ["kind", "aks"]
KUBERNETES_VERSION = "1.37.0"


def run(argv, what):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def fail(message):
    print(f"deploy/check.py: {message}", file=sys.stderr)
    sys.exit(1)


def render(overlay):
    code, out, err = run([str(VENV_BIN / "kubectl"), "kustomize", str(DEPLOY / "kustomize/overlays" / overlay)], "kustomize")
    if code != 0:
        fail(f"kubectl kustomize {overlay} failed: {err.strip()}")
    return out


def validate(path):
    return run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)],
        "kubernetes-validate",
    )


def check_chart(rendered_aks):
    """No Helm renderer is installable here, so the chart is not rendered; what can be checked
    offline is: its values validate against its schema, and what it shares with the kustomize
    base (rules, resources, tolerations, the agent's capabilities) is the same."""
    import jsonschema
    import yaml

    chart = DEPLOY / "helm/peregrine"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    schema = json.loads((chart / "values.schema.json").read_text())
    try:
        jsonschema.validate(values, schema)
    except jsonschema.ValidationError as e:
        fail(f"helm values.yaml does not match values.schema.json: {e.message} at {list(e.absolute_path)}")
    bad = dict(values, clusterNam="typo")
    try:
        jsonschema.validate(bad, schema)
        fail("negative control: values.schema.json accepted an unknown key `clusterNam`")
    except jsonschema.ValidationError:
        pass
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered_aks.read_text()) if o}
    ds = objects[("DaemonSet", "peregrine-agent")]["spec"]["template"]["spec"]
    agent = ds["containers"][0]
    sts = objects[("StatefulSet", "peregrine-collector")]["spec"]["template"]["spec"]["containers"][0]
    rules = objects[("ConfigMap", "peregrine-rules")]["data"]["peregrine_rules.yaml"]
    pairs = [
        ("rules", values["rules"].strip(), rules.strip()),
        ("agent.resources", values["agent"]["resources"], agent["resources"]),
        ("agent.tolerations", values["agent"]["tolerations"], ds["tolerations"]),
        ("collector.resources", values["collector"]["resources"], sts["resources"]),
    ]
    template = (chart / "templates/agent.yaml").read_text()
    block = template.split("              add:\n", 1)[1].split("            seccompProfile:", 1)[0]
    chart_caps = [l.strip()[2:] for l in block.splitlines() if l.strip().startswith("- ")]
    pairs.append(("agent capabilities", chart_caps, agent["securityContext"]["capabilities"]["add"]))
    for what, chart_value, kustomize_value in pairs:
        if chart_value != kustomize_value:
            fail(f"helm chart and kustomize differ in {what}: chart {chart_value!r}, kustomize {kustomize_value!r}")
    print("helm chart: values match values.schema.json; rules, resources, tolerations and capabilities match kustomize")


def main():
    with tempfile.TemporaryDirectory(prefix="peregrine-deploy-check-") as tmp:
        tmp = pathlib.Path(tmp)
        rendered = {}
        for overlay in OVERLAYS:
            path = tmp / f"{overlay}.yaml"
            path.write_text(render(overlay))
            rendered[overlay] = path

        # Negative control: strict validation must reject a field Kubernetes does not have.
        broken = tmp / "broken.yaml"
        broken.write_text(rendered["kind"].read_text().replace("hostPID: true", "hostPID: true\n      hostPIDD: true", 1))
        code, out, err = validate(broken)
        if code == 0:
            fail("negative control: kubernetes-validate accepted a DaemonSet with an unknown field `hostPIDD`")

        for overlay, path in rendered.items():
            code, out, err = validate(path)
            if code != 0:
                fail(f"overlay {overlay}: objects do not validate against Kubernetes {KUBERNETES_VERSION}:\n{out}{err}")
            print(f"overlay {overlay}: every object validates strictly against Kubernetes {KUBERNETES_VERSION}")

            code, out, err = run(
                [str(VENV_BIN / "checkov"), "--framework", "kubernetes", "-f", str(path), "--output", "json"],
                "checkov",
            )
            try:
                report = json.loads(out)
            except json.JSONDecodeError:
                fail(f"overlay {overlay}: checkov printed no JSON report (exit {code}): {err.strip()[:2000]}")
            reports = report if isinstance(report, list) else [report]
            failed, passed, skipped, parse_errors = [], 0, [], 0
            for r in reports:
                results = r.get("results", {})
                failed += results.get("failed_checks", [])
                passed += r.get("summary", {}).get("passed", 0)
                parse_errors += r.get("summary", {}).get("parsing_errors", 0)
                skipped += results.get("skipped_checks", [])
            if parse_errors or passed == 0:
                fail(f"overlay {overlay}: checkov parsed nothing ({parse_errors} parsing errors, {passed} checks passed)")
            if failed:
                lines = [f"  {c['check_id']} {c['check_name']}: {c['resource']}" for c in failed]
                fail(
                    f"overlay {overlay}: checkov findings without a justified suppression:\n"
                    + "\n".join(lines)
                    + "\nfix them, or add `checkov.io/skipN: <ID>=<reason>` to the object's annotations"
                )
            for c in skipped:
                if not c.get("check_result", {}).get("suppress_comment"):
                    fail(f"overlay {overlay}: {c['check_id']} on {c['resource']} is suppressed without a reason")
            print(f"overlay {overlay}: checkov clean ({passed} passed, {len(skipped)} suppressed with reasons)")
        check_chart(rendered["aks"])


if __name__ == "__main__":
    main()
