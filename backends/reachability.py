"""Tell a pool whose connections are all busy from a server that cannot be reached.

Both end the same way inside the pool: no connection comes free within its
timeout. psycopg_pool keeps a dead connection's slot while it tries to connect
again in the background, so an outage looks like a full pool. When a pool times
out, the engines therefore ask the server directly, with one short connection
of their own, and answer ``DatabaseUnreachable`` or ``PoolExhausted``
accordingly.

The answer is kept for a second per alias: a pool that times out under load
would otherwise add a connection attempt to every request it turns away.
"""

from __future__ import annotations

from time import monotonic

# How long an answer holds, and how long the probe may take to connect.
ANSWER_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 2

# alias -> (when asked, the error that connecting raised, or None)
_answers: dict[str, tuple[float, Exception | None]] = {}


def connect_error(wrapper) -> Exception | None:
    """Why a new connection to `wrapper`'s database cannot be opened now, or None if it can."""
    now = monotonic()
    answer = _answers.get(wrapper.alias)
    if answer is not None and now - answer[0] < ANSWER_SECONDS:
        return answer[1]
    params = {**wrapper.get_connection_params(), "connect_timeout": CONNECT_TIMEOUT_SECONDS}
    error: Exception | None = None
    try:
        wrapper.Database.connect(**params).close()
    except wrapper.Database.Error as exc:
        error = exc
    _answers[wrapper.alias] = (monotonic(), error)
    return error
