"""Headless Chromium (Debian's `chromium`) opening a page the way a user's browser would: it
loads the page, decodes every image, and hands back the DOM as it stands after `load`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = shutil.which("chromium")
# The flags this machine needs (no sandbox as root; nothing that reaches for the network).
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=10000",
]  # fmt: skip
# After load: each image's decoded width (0 = not rendered) and the page's visible text.
PROBE = """<script>window.addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "render-probe";
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth})),
    text: document.body.innerText});
  document.body.appendChild(out);
});</script>"""


@dataclass(frozen=True)
class Rendered:
    images: list[tuple[str, int]]  # (alt text, decoded width in pixels)
    text: str  # what the page shows as text


def render(page: Path, work: Path) -> Rendered:
    """`page` as Chromium renders it (a probe script added to a copy in `work`)."""
    assert CHROMIUM is not None, "chromium is not installed"
    probed = work / f"probed-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={work / 'chromium-profile'}", "--dump-dom",
         probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="render-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page never finished loading:\n{done.stdout[-2000:]}"
    import html

    probe = json.loads(html.unescape(found.group(1)))
    return Rendered([(i["alt"], int(i["width"])) for i in probe["images"]], probe["text"])
