"""Small helpers shared by the shop's JSON endpoints.

Every API answer is JSON, errors included: a client (or a load test) can tell a
refused request from a broken server by the status code alone, and read why
from ``{"error": ...}``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from apps.web import unavailable


class ApiError(Exception):
    """A request the API refuses; becomes ``{"error": message, ...details}`` with `status`."""

    def __init__(self, status: int, message: str, **details: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def json_error(status: int, message: str, **details: object) -> JsonResponse:
    return JsonResponse({"error": message, **details}, status=status)


def method_not_allowed(allowed: Iterable[str]) -> JsonResponse:
    allowed = sorted(allowed)
    response = json_error(405, f"Method not allowed; use {', '.join(allowed)}.", allowed=allowed)
    response["Allow"] = ", ".join(allowed)
    return response


def _refusal(exc: ApiError | Http404) -> JsonResponse:
    if isinstance(exc, ApiError):
        return json_error(exc.status, exc.message, **exc.details)
    return json_error(404, str(exc) or "Not found.")


def _unavailable_or_raise(request: HttpRequest, exc: DatabaseError) -> JsonResponse:
    """A JSON 503 for transient database trouble; anything else stays an error (a 500)."""
    response = unavailable.answer_if_transient(request, exc, as_json=True)
    if response is None:
        raise exc
    return response


def json_api(*methods: str) -> Callable:
    """Allow only `methods`, and turn ApiError, Http404 and transient database errors into JSON answers.

    Works for plain and ``async def`` views alike.
    """
    allowed = set(methods)

    def decorate(view: Callable) -> Callable:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
                if request.method not in allowed:
                    return method_not_allowed(allowed)
                try:
                    return await view(request, *args, **kwargs)
                except (ApiError, Http404) as exc:
                    return _refusal(exc)
                except DatabaseError as exc:
                    return _unavailable_or_raise(request, exc)

            return markcoroutinefunction(async_wrapper)

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in allowed:
                return method_not_allowed(allowed)
            try:
                return view(request, *args, **kwargs)
            except (ApiError, Http404) as exc:
                return _refusal(exc)
            except DatabaseError as exc:
                return _unavailable_or_raise(request, exc)

        return wrapper

    return decorate


def read_json_body(request: HttpRequest) -> object:
    """The request body parsed as JSON, or ApiError 415/400 saying what is wrong with it."""
    if request.content_type != "application/json":
        raise ApiError(415, "Send the body as JSON with Content-Type: application/json.")
    try:
        return json.loads(request.body)
    # ValueError also covers a number too long to convert (over 4,300 digits);
    # RecursionError, arrays nested thousands deep.
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"The body is not valid JSON: {exc}.") from exc


def form_errors(form) -> dict[str, list[str]]:
    """A bound form's errors as plain JSON: {field: [messages]}."""
    return {field: [str(message) for message in messages] for field, messages in form.errors.items()}
