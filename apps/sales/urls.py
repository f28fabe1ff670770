from django.urls import path

from apps.sales import views

app_name = "sales"

urlpatterns = [
    path("reports/sales/", views.report, name="report"),
    path("api/raw/reports/sales/", views.api_report, name="api-report"),
    path("api/raw/reports/sales/daily/", views.api_daily, name="api-daily"),
]
