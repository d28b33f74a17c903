"""Generate the chart's README.md from README.md.gotmpl and the `# --` comments of values.yaml.

    python charts/sparring/gen_readme.py           # rewrite charts/sparring/README.md
    python charts/sparring/gen_readme.py --check   # exit 1 when README.md is out of date

A small stand-in for helm-docs (no Go binary here) that understands the subset this chart uses:
a `# -- text` comment, continued on the following `#` lines, documents the key below it;
`##` lines (`## ref:` links) and commented-out examples after a key are not descriptions.
A documented map is one row (its children are its default). The template may use
`{{ template "chart.X" . }}` for name, description, version, appVersion, kubeVersion and
valuesTable, as helm-docs does, so the real helm-docs renders the same template.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent
COMMAND = "python charts/sparring/gen_readme.py"
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.\-/]+):(\s|$)")
DESCRIPTION = re.compile(r"^\s*# -- ?(?P<text>.*)$")
CONTINUATION = re.compile(r"^\s*#(?!#) ?(?P<text>.*)$")
TEMPLATE_CALL = re.compile(r'\{\{-?\s*template\s+"chart\.(?P<name>\w+)"\s+\.\s*-?\}\}')


@dataclass(frozen=True)
class Row:
    key: str  # dotted path
    type: str
    default: Any
    description: str


def documented_keys(values_text: str) -> dict[tuple[str, ...], str]:
    """Path of every key preceded by a `# --` comment -> its description."""
    docs: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    continuing = False
    for line in values_text.splitlines():
        if not line.strip():
            pending, continuing = None, False
            continue
        if match := DESCRIPTION.match(line):
            pending, continuing = [match["text"].strip()], True
            continue
        if line.lstrip().startswith("##"):
            continuing = False
            continue
        if match := CONTINUATION.match(line):
            if continuing and pending is not None:
                pending.append(match["text"].strip())
            continue
        match = KEY.match(line)
        if match is None:
            continue  # a list item or a continued scalar
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending is not None:
            docs[tuple(key for _, key in stack)] = " ".join(p for p in pending if p)
        pending, continuing = None, False
    return docs


def _leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for key, child in node.items() for leaf in _leaves(child, (*path, key))]
    return [path]


def undocumented(values_text: str) -> list[str]:
    """Leaf keys with no `# --` comment on themselves or on a map above them."""
    docs = documented_keys(values_text)
    values = yaml.safe_load(values_text)
    missing = []
    for leaf in _leaves(values):
        if not any(leaf[:n] in docs for n in range(1, len(leaf) + 1)):
            missing.append(".".join(leaf))
    return missing


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def rows(values_text: str) -> list[Row]:
    values = yaml.safe_load(values_text)
    out = []
    for path, description in documented_keys(values_text).items():
        node: Any = values
        for key in path:
            node = node[key]
        out.append(Row(".".join(path), _type(node), node, description))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def values_table(values_text: str) -> str:
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for row in rows(values_text):
        default = json.dumps(row.default, separators=(",", ":"), sort_keys=False)
        lines.append(f"| {row.key} | {row.type} | `{_cell(default)}` | {_cell(row.description)} |")
    return "\n".join(lines)


def render(chart_dir: Path = CHART) -> str:
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    values_text = (chart_dir / "values.yaml").read_text(encoding="utf-8")
    parts = {
        "name": meta["name"],
        "description": " ".join(str(meta.get("description", "")).split()),
        "version": meta["version"],
        "appVersion": str(meta.get("appVersion", "")),
        "kubeVersion": str(meta.get("kubeVersion", "")),
        "valuesTable": values_table(values_text),
    }
    template = (chart_dir / "README.md.gotmpl").read_text(encoding="utf-8")

    def substitute(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in parts:
            raise KeyError(f"README.md.gotmpl: unknown template chart.{name}")
        return parts[name]

    return TEMPLATE_CALL.sub(substitute, template)


def main(argv: list[str]) -> int:
    readme = CHART / "README.md"
    missing = undocumented((CHART / "values.yaml").read_text(encoding="utf-8"))
    if missing:
        print("values.yaml keys without a `# --` comment: " + ", ".join(missing), file=sys.stderr)
        return 1
    wanted = render()
    if "--check" in argv:
        if readme.is_file() and readme.read_text(encoding="utf-8") == wanted:
            print("charts/sparring/README.md: up to date")
            return 0
        print(f"charts/sparring/README.md is out of date; run: {COMMAND}", file=sys.stderr)
        return 1
    readme.write_text(wanted, encoding="utf-8")
    print("wrote charts/sparring/README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
