"""The Locust scenarios by name, and the user class that plays each (loadtests/locustfile.py)."""

SCENARIOS = {
    "orm": "OrmUser",  # ORM product page, then a slow external call
    "raw": "RawUser",  # raw SQL (`with connection.cursor()`), then the call
    "mixed": "MixedUser",  # a shop: browsing, raw reports, orders, exports
    "atomic": "AtomicUser",  # write transactions only: release gains nothing
    "leaky": "LeakyUser",  # a raw cursor never closed: release cannot help
}

# Scenarios whose every request is the same query-then-external-call, and that
# request's path: one of them timed on the idle server gives the thread bound.
SINGLE_REQUEST_PATHS = {
    "orm": "/api/orm/products/{product}/with-external-call/",
    "raw": "/api/raw/products/{product}/with-external-call/",
    "leaky": "/api/raw/leaky/",
}
