"""Transient database trouble answers 503 Service Unavailable with Retry-After, logged once.

A pool with no connection free, a database that cannot be reached, a connection
lost in the middle of a request: the request failed, but the same request a
moment later may well succeed. So the client hears "retry shortly" (503 with
``Retry-After``), not "the server is broken" (500), and the log gets one line at
WARNING that names the cause, instead of a traceback at ERROR.

Three places turn such an error into a 503, all through service_unavailable():

* ``DatabaseUsageMiddleware.process_exception`` (apps/metrics/middleware.py),
  for errors raised by a view, in DEBUG too;
* ``json_api`` (apps/web/http.py), which answers in JSON like every API error;
* server_error() below, the project's ``handler500``, for errors raised
  anywhere else (another middleware, a template rendered after the view).

An error raised while a streaming response is already being sent cannot
become a 503 any more: the status went out with the first byte. Views that
stream therefore run their first query before they return (apps/orders/export.py).
"""

from __future__ import annotations

import logging
import sys

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from backends.errors import CONNECTION_LOST, DATABASE_UNREACHABLE, POOL_EXHAUSTED, transient_cause

logger = logging.getLogger("apps.web.unavailable")

RETRY_AFTER_SECONDS = 1

MESSAGES = {
    POOL_EXHAUSTED: "The database is busy: every pooled connection is in use.",
    DATABASE_UNREACHABLE: "The database cannot be reached right now.",
    CONNECTION_LOST: "The connection to the database was lost while answering.",
}
OTHER = "The database is not available."


def one_line(error: BaseException) -> str:
    """The error's message on one line, whatever the driver's looks like (libpq's span several)."""
    return " ".join(str(error).split())


def service_unavailable(
    request: HttpRequest, cause: str, error: BaseException, *, as_json: bool = False
) -> HttpResponse:
    """503 with Retry-After for `cause` (one of backends.errors' causes), logged once at WARNING."""
    logger.warning("503 for %s %s: %s (%s)", request.method, request.path, cause, one_line(error))
    message = f"{MESSAGES.get(cause, OTHER)} Please retry shortly."
    if as_json:
        response = JsonResponse({"status": "unavailable", "error": message, "cause": cause}, status=503)
    else:
        response = HttpResponse(f"{message}\n", status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    # Django's request logger would add an ERROR line for this 5xx
    # (django.utils.log.log_response); the warning above is the one line.
    response._has_been_logged = True
    return response


def answer_if_transient(request: HttpRequest, error: BaseException, *, as_json: bool = False):
    """A 503 if `error` is transient database trouble, else None (the error stays a 500)."""
    cause = transient_cause(error)
    if cause is None:
        return None
    return service_unavailable(request, cause, error, as_json=as_json)


def server_error(request: HttpRequest, template_name: str = defaults.ERROR_500_TEMPLATE_NAME):
    """handler500: a 503 for transient database trouble, Django's own 500 page for anything else."""
    # Django calls the handler while it handles the exception, so it is still current.
    error = sys.exc_info()[1]
    if error is not None:
        response = answer_if_transient(request, error, as_json=request.path.startswith("/api/"))
        if response is not None:
            return response
    return defaults.server_error(request, template_name)
