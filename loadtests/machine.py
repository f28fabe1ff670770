"""What a report was measured on: the CPU, the versions, the commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# Written at build time where there is no git (a container image): the commit, one line.
COMMIT_FILE = BASE_DIR / "COMMIT"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    """GIT_COMMIT from the environment, else the COMMIT file, else git, else "unknown"."""
    if os.environ.get("GIT_COMMIT", "").strip():
        return os.environ["GIT_COMMIT"].strip()
    try:
        written = COMMIT_FILE.read_text().strip()
    except OSError:
        written = ""
    if written:
        return written
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BASE_DIR, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):  # no git here
        return "unknown"
    return result.stdout.strip() or "unknown"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "django": version("django"),
        "gunicorn": version("gunicorn"),
        "system": f"{platform.system()} {platform.release()}",
        "commit": commit(),
    }
