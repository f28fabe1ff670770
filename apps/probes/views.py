"""Probes for containers and load balancers."""

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from apps.web.unavailable import service_unavailable
from backends.errors import transient_cause


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and answering; says nothing about the database."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """A connection can be borrowed from the pool, used and given back; else 503 with Retry-After."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        # Not ready, whatever the error: a wrong password is no reason to send traffic here either.
        return service_unavailable(request, transient_cause(exc) or "database error", exc, as_json=True)
    return JsonResponse({"status": "ok", "engine": connection.release_engine})
