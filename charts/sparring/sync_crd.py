"""Rewrite the chart's CRD templates from the generated CRDs (`sparring crd --kind ...`).

    python charts/sparring/sync_crd.py           # rewrite templates/crd/*.yaml
    python charts/sparring/sync_crd.py --check   # exit 1 when a template is out of date

One template per kind (AdversarialGame, SparringRuntime, ClusterSparringRuntime). Each is the
generator's YAML, byte for byte, wrapped in the `crds.enabled` condition, with the chart's
labels and (when `crds.keep`) `helm.sh/resource-policy: keep` added to its
metadata (the kubebuilder chart layout). CRDs live in `templates/crd/` rather than `crds/`
because Helm installs a chart's `crds/` folder once and never upgrades it.
tests/test_chart.py renders the templates and compares the objects with `crdgen.build_crd()` and
`crdgen.build_runtime_crd()`.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent
TEMPLATE = CHART / "templates" / "crd" / "adversarialgames.yaml"
# kind -> its template
TEMPLATES = {
    "AdversarialGame": TEMPLATE,
    "SparringRuntime": CHART / "templates" / "crd" / "sparringruntimes.yaml",
    "ClusterSparringRuntime": CHART / "templates" / "crd" / "clustersparringruntimes.yaml",
}
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


def generated_crd(kind: str = "AdversarialGame") -> str:
    """`sparring crd --kind KIND`."""
    from sparring_operator.crdgen import KINDS

    return KINDS[kind][0]()


def main(argv: list[str]) -> int:
    failed = False
    for kind, template in TEMPLATES.items():
        wanted = render_template(generated_crd(kind))
        rel = template.relative_to(CHART.parent.parent)
        if "--check" in argv:
            if template.is_file() and template.read_text(encoding="utf-8") == wanted:
                print(f"{rel}: up to date")
            else:
                print(f"{rel}: out of date with `sparring crd --kind {kind}`; run: {COMMAND}",
                      file=sys.stderr)  # fmt: skip
                failed = True
            continue
        template.parent.mkdir(parents=True, exist_ok=True)
        template.write_text(wanted, encoding="utf-8")
        print(f"wrote {rel}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
