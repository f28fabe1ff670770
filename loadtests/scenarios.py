"""The Locust scenarios by name, the user class that plays each (loadtests/locustfile.py), their server."""

SCENARIOS = {
    "orm": "OrmUser",  # ORM product page, then a slow external call
    "raw": "RawUser",  # raw SQL (`with connection.cursor()`), then the call
    "mixed": "MixedUser",  # a shop: browsing, raw reports, orders, exports
    "atomic": "AtomicUser",  # write transactions only: release gains nothing
    "leaky": "LeakyUser",  # a raw cursor never closed: release cannot help
    "async": "AsyncUser",  # an async view: async ORM reads around an awaited call (ASGI)
    "tasks": None,  # no Locust: a Celery worker's threads confirm orders (loadtests.tasks)
}

# Scenarios whose every request is the same query-then-external-call, and that
# request's path: one of them timed on the idle server gives the thread bound.
SINGLE_REQUEST_PATHS = {
    "orm": "/api/orm/products/{product}/with-external-call/",
    "raw": "/api/raw/products/{product}/with-external-call/",
    "leaky": "/api/raw/leaky/",
    "async": "/api/async/products/{product}/with-external-call/",
}

# How each scenario is served unless --server says otherwise: "wsgi" (gunicorn's
# gthread workers) or "asgi" (gunicorn with uvicorn workers).
SERVERS = ("wsgi", "asgi")
DEFAULT_SERVER = {"async": "asgi"}

# Locust users per server unless --users says: under WSGI the worker's threads
# bound the requests in flight; under ASGI only the clients do.
DEFAULT_USERS = {"wsgi": 64, "asgi": 256}


# Scenarios served by a task worker this run starts, whatever --server and --target say.
WORKER_SCENARIOS = frozenset({"tasks"})


def server_of(scenario: str, chosen: str | None = None) -> str:
    if scenario in WORKER_SCENARIOS:
        return "worker"
    return chosen or DEFAULT_SERVER.get(scenario, "wsgi")
