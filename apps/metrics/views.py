from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apps.metrics import prometheus
from apps.metrics.access import internal_only


@require_GET
@internal_only
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(prometheus.registry()), content_type=CONTENT_TYPE_LATEST)
