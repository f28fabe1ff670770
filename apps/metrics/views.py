from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apps.metrics import prometheus
from apps.metrics.access import internal_only
from apps.metrics.receivers import record_pool_usage


@require_GET
@internal_only
def metrics(request: HttpRequest) -> HttpResponse:
    record_pool_usage()  # this worker's gauges as of now; the others' as of their last request
    return HttpResponse(generate_latest(prometheus.registry()), content_type=CONTENT_TYPE_LATEST)
