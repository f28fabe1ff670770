from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from apps.sales.daily import daily_sales
from apps.sales.forms import ReportForm
from apps.sales.queries import sales_report
from apps.web.http import ApiError, form_errors, json_api


@require_safe
def report(request: HttpRequest) -> HttpResponse:
    form = ReportForm(request.GET)
    if not form.is_valid():
        return render(request, "sales/report.html", {"form": form, "report": None}, status=400)
    report = sales_report(*form.period(), top=form.cleaned_data["top"] or 10)
    return render(request, "sales/report.html", {"form": form, "report": report})


@json_api("GET", "HEAD")
def api_report(request: HttpRequest) -> JsonResponse:
    form = ReportForm(request.GET)
    if not form.is_valid():
        raise ApiError(400, "Invalid report parameters.", fields=form_errors(form))
    report = sales_report(*form.period(), top=form.cleaned_data["top"] or 10)
    return JsonResponse(report.as_json())


@json_api("GET", "HEAD")
def api_daily(request: HttpRequest) -> JsonResponse:
    """Revenue per calendar day in ?tz= (an IANA zone, UTC by default), over ?days= or ?start=&end=."""
    form = ReportForm(request.GET)
    if not form.is_valid():
        raise ApiError(400, "Invalid report parameters.", fields=form_errors(form))
    zone = request.GET.get("tz", "UTC")
    try:
        days = daily_sales(*form.period(), zone=zone)
    except ValueError as exc:
        raise ApiError(400, "Invalid report parameters.", fields={"tz": [str(exc)]}) from None
    return JsonResponse({"time_zone": zone, "days": [day.as_json() for day in days]})
