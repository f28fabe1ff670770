"""The shop's Locust scenarios, with every request written to a file: for loadtests/faults.py
and loadtests/soak.py.

FAULTS_REQUEST_LOG names the file; each line is "start end status name", times in
seconds since the epoch, status 0 when no HTTP answer came (connection refused, reset).
"""

from __future__ import annotations

import os

from locust import events

from loadtests.locustfile import AsyncUser, MixedUser, OrmUser, RawUser  # noqa: F401 - the user classes Locust runs

_log = open(os.environ["FAULTS_REQUEST_LOG"], "a", buffering=1)  # noqa: SIM115 - open for the whole run


@events.request.add_listener
def log_request(request_type, name, response_time, response, start_time, **kwargs) -> None:
    status = getattr(response, "status_code", 0) or 0
    _log.write(f"{start_time:.4f} {start_time + response_time / 1000:.4f} {status} {name}\n")


@events.quitting.add_listener
def close_log(**kwargs) -> None:
    _log.close()
