"""Who may see the pool's internals (/metrics, /pool/): METRICS_ALLOWED_IPS."""

from __future__ import annotations

import ipaddress
from functools import wraps

from django.conf import settings
from django.http import HttpRequest, HttpResponseForbidden

# A project without METRICS_ALLOWED_IPS (one that copied apps/metrics in) shows them to this machine only.
LOOPBACK = ["127.0.0.1", "::1"]


def is_allowed(request: HttpRequest) -> bool:
    allowed = getattr(settings, "METRICS_ALLOWED_IPS", LOOPBACK)
    if "*" in allowed:
        return True
    try:
        client = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(client in ipaddress.ip_network(network, strict=False) for network in allowed)


def internal_only(view):
    """Refuse the view to clients outside METRICS_ALLOWED_IPS: it reveals internals."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not is_allowed(request):
            return HttpResponseForbidden(
                "Not available from this address (see METRICS_ALLOWED_IPS).\n",
                content_type="text/plain",
            )
        return view(request, *args, **kwargs)

    return wrapper
