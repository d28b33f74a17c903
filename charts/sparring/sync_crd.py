"""Rewrite the chart's CRD template from the generated CRD (`sparring crd`).

    python charts/sparring/sync_crd.py           # rewrite templates/crd/adversarialgames.yaml
    python charts/sparring/sync_crd.py --check   # exit 1 when the template is out of date

The template is the generator's YAML, byte for byte, wrapped in the `crds.enabled` condition,
with the chart's labels and (when `crds.keep`) `helm.sh/resource-policy: keep` added to its
metadata (the kubebuilder chart layout). CRDs live in `templates/crd/` rather than `crds/`
because Helm installs a chart's `crds/` folder once and never upgrades it.
tests/test_chart.py renders the template and compares the object with `crdgen.build_crd()`.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent
TEMPLATE = CHART / "templates" / "crd" / "adversarialgames.yaml"
COMMAND = "python charts/sparring/sync_crd.py"

HEAD = (
    "{{- if .Values.crds.enabled }}\n"
    + f"# GENERATED from `sparring crd` by `{COMMAND}`; do not edit.\n"
)
METADATA = """\
  labels:
    {{- include "sparring.labels" . | nindent 4 }}
    app.kubernetes.io/component: crd
  {{- if or .Values.crds.keep .Values.crds.annotations }}
  annotations:
    {{- if .Values.crds.keep }}
    helm.sh/resource-policy: keep
    {{- end }}
    {{- with .Values.crds.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
"""
TAIL = "{{- end }}\n"


def render_template(generated: str) -> str:
    """The chart template for the generator's CRD YAML (its comment header dropped)."""
    lines = [line for line in generated.splitlines(keepends=True) if not line.startswith("#")]
    body = "".join(lines)
    if "{{" in body or "}}" in body:
        # Helm would read these as template actions inside descriptions.
        raise ValueError("the generated CRD contains '{{' or '}}': escape them before embedding")
    anchor = "metadata:\n  name: "
    start = body.index(anchor)
    end = body.index("\n", start + len(anchor)) + 1
    if not body.startswith("apiVersion: apiextensions.k8s.io/v1\n"):
        raise ValueError("unexpected start of the generated CRD")
    return HEAD + body[:end] + METADATA + body[end:] + TAIL


def generated_crd() -> str:
    from sparring_operator.crdgen import render_crd

    return render_crd()


def main(argv: list[str]) -> int:
    wanted = render_template(generated_crd())
    rel = TEMPLATE.relative_to(CHART.parent.parent)
    if "--check" in argv:
        if TEMPLATE.is_file() and TEMPLATE.read_text(encoding="utf-8") == wanted:
            print(f"{rel}: up to date")
            return 0
        print(f"{rel}: out of date with `sparring crd`; run: {COMMAND}", file=sys.stderr)
        return 1
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(wanted, encoding="utf-8")
    print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
