"""Per-request connection usage: the Server-Timing header; 503 for transient database trouble."""

from __future__ import annotations

from functools import partial

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from apps.metrics import prometheus
from apps.metrics.requests import RequestUsage, current, request_usage
from apps.web import unavailable
from backends import compat


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
        # request_finished sums the request up. Under ASGI it runs in a context
        # that never saw current.set() above: close() hands it the usage again.
        compat.call_when_closing(response, partial(current.set, usage))
        response["Server-Timing"] = usage.server_timing()
        prometheus.http_requests_by_class(response.status_code).inc()
        return response

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> None:
        # Before the view runs, so a request cut short (a client gone under ASGI) has its view too.
        usage = request_usage()
        if usage is not None:
            usage.view = request.resolver_match.view_name

    def process_exception(self, request: HttpRequest, exception: Exception):
        # Last of the middlewares to see a view's exception, as it is listed first.
        return unavailable.answer_if_transient(request, exception)
