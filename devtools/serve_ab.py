"""Serve the shop twice, side by side: `python -m devtools.serve_ab` (`make run-ab`).

    http://127.0.0.1:8000  release engine (DB_RELEASE=cursor)
    http://127.0.0.1:8001  stock Django (DB_RELEASE=request), same pool and threads

Each site's /pool/ shows its own pool beside the other's (DASHBOARD_PEER_URL), so a
load on either (Locust, `make demo`'s scenarios) shows the difference at a glance.
Prepares the database as `make run` does; Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from devtools.serve import BASE_DIR, configure_environment, prepare, say

SIDES = (("release", "cursor"), ("baseline", "request"))


def site_environment(release: str, port: int, peer_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DB_RELEASE": release,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "DASHBOARD_PEER_URL": f"http://127.0.0.1:{peer_port}",
    }


def start(release: str, port: int, peer_port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "gunicorn", "-c", str(BASE_DIR / "project" / "gunicorn.conf.py")]
    # A session of its own: Ctrl-C reaches this process, which stops both sites in order.
    return subprocess.Popen(
        command, cwd=BASE_DIR, env=site_environment(release, port, peer_port), start_new_session=True
    )


def stop(sites: list[subprocess.Popen]) -> None:
    for site in sites:
        if site.poll() is None:
            site.send_signal(signal.SIGTERM)
    for site in sites:
        try:
            site.wait(timeout=20)
        except subprocess.TimeoutExpired:
            site.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="release site's port; baseline's is the next")
    parser.add_argument("--seed", default="small", help="seed size, or 'none' to skip seeding")
    args = parser.parse_args(argv)

    configure_environment()
    prepare(None if args.seed == "none" else args.seed)

    ports = (args.port, args.port + 1)
    sites = [
        start(release, port, peer)
        for (_, release), port, peer in zip(SIDES, ports, reversed(ports), strict=True)
    ]
    for (name, release), port in zip(SIDES, ports, strict=True):
        say(f"{name} (DB_RELEASE={release}) on http://127.0.0.1:{port}/")
    say(f"look at http://127.0.0.1:{ports[0]}/pool/: both pools side by side; Ctrl-C stops both")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while all(site.poll() is None for site in sites):
            time.sleep(0.5)
        say("a site stopped; stopping the other")
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        stop(sites)


if __name__ == "__main__":
    sys.exit(main())
