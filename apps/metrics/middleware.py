"""Per-request connection usage: the Server-Timing header, and 503 when the pool is exhausted."""

from __future__ import annotations

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from apps.metrics import prometheus
from apps.metrics.requests import RequestUsage, current
from backends.pool import PoolExhausted

logger = logging.getLogger("apps.metrics")

RETRY_AFTER_SECONDS = 1


class DatabaseUsageMiddleware:
    """Put first in MIDDLEWARE, so it sees every query of the request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self.__acall__(request)
        usage = RequestUsage()
        current.set(usage)
        return self.finish(self.get_response(request), usage)

    async def __acall__(self, request: HttpRequest):
        usage = RequestUsage()
        current.set(usage)
        return self.finish(await self.get_response(request), usage)

    def finish(self, response: HttpResponse, usage: RequestUsage) -> HttpResponse:
        response["Server-Timing"] = usage.server_timing()
        prometheus.http_requests_by_class(response.status_code).inc()
        return response

    def process_exception(self, request: HttpRequest, exception: Exception):
        if not isinstance(exception, PoolExhausted):
            return None
        logger.warning("503 for %s %s: %s", request.method, request.path, exception)
        response = HttpResponse(
            "The database is busy: every pooled connection is in use. Please retry shortly.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
