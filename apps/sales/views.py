from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from apps.http import ApiError, form_errors, json_api
from apps.sales.forms import ReportForm
from apps.sales.queries import sales_report


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
