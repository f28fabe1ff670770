"""The README stays short, and every path, link and make target it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
MAKE = re.compile(r"\bmake ([a-z][a-z0-9-]*)")
PATH_ENDINGS = (".py", ".md", ".yml", ".toml", ".png")


def links(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        yield target.split("#")[0]


def looks_like_path(text):
    if " " in text or text.startswith(("/", "<", ".", "-", "http")):
        return False
    if any(ch in text for ch in "*?<>{}$=\"'(),"):
        return False
    return "/" in text or text.endswith(PATH_ENDINGS)


def makefile_targets():
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.MULTILINE))


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_every_relative_link_in_readme_and_docs_exists():
    missing = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in [README, *DOCS]
        for target in links(page)
        if not (page.parent / target).exists()
    ]
    assert not missing


def test_every_repo_path_in_readme_backticks_exists():
    paths = [text for text in CODE.findall(README.read_text()) if looks_like_path(text)]
    assert "backends/" in paths
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing


def test_every_make_target_in_readme_is_in_the_makefile():
    mentioned = set(MAKE.findall(README.read_text()))
    assert "demo" in mentioned
    assert not mentioned - makefile_targets()
