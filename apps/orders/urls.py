from django.urls import path

from apps.orders import api, export, views

app_name = "orders"

urlpatterns = [
    path("orders/new/", views.new_order, name="new"),
    path("orders/export.csv", views.export_csv, name="export-csv"),
    # The same file, streamed under ASGI (uvicorn).
    path("orders/async/export.csv", export.export_csv_async, name="export-csv-async"),
    # Order numbers are letters, digits and dashes ("W-1A2B3C4D5E6F", "S-00000042").
    path("orders/<slug:number>/", views.order_detail, name="order-detail"),
    path("api/orders/", api.place, name="api-place"),
]
