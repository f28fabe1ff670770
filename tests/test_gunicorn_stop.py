"""gunicorn under project/gunicorn.conf.py stops cleanly on SIGTERM, every time."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import POOL

pytestmark = pytest.mark.skipif(POOL != "native", reason="does not depend on the pool; run once")

STOPS = 20


def test_sigterm_stops_four_workers_with_status_0_every_time(serve):
    # The workers exit together, so the master's SIGCHLD handler (child_exit) runs while
    # it is handling the previous one: anything there that can fail, fails now and then
    # (an import did, in about one stop in ten).
    for stop in range(1, STOPS + 1):
        server = serve(workers=4, env={"DB_POOL": POOL})
        server.process.send_signal(signal.SIGTERM)  # to the master only, as `docker stop` does
        returncode = server.process.wait(timeout=30)

        log = server.output()
        assert returncode == 0, f"stop {stop} of {STOPS}: gunicorn exited with {returncode}\n{log}"
        assert "Traceback" not in log, f"stop {stop} of {STOPS}\n{log}"
        assert log.count("Worker exiting") == 4, log
