from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from apps.catalog.models import Product
from apps.web.http import json_error


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    # Any product will do for the example links to the per-product endpoints.
    example = Product.objects.order_by("pk").only("pk", "name").first()
    return render(request, "storefront/home.html", {"example": example})


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404 for the whole site (handler404): JSON under /api/, a page everywhere else."""
    message = _message(exception) or "Not found."
    if request.path.startswith("/api/"):
        return json_error(404, message, path=request.path)
    return render(request, "storefront/404.html", {"message": message}, status=404)


def _message(exception: Exception) -> str:
    # Django's resolver raises Http404 with a dict of debugging details when no URL matches.
    argument = exception.args[0] if exception.args else ""
    return argument if isinstance(argument, str) else ""
