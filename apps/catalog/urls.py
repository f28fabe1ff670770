from django.urls import path

from apps.catalog import api, views

app_name = "catalog"

urlpatterns = [
    path("products/", views.product_list, name="product-list"),
    path("products/<int:product_id>/", views.product_detail, name="product-detail"),
    path("api/orm/products/", api.product_list, name="api-product-list"),
    path("api/orm/products/<int:product_id>/", api.product_detail, name="api-product-detail"),
    path(
        "api/orm/products/<int:product_id>/with-external-call/",
        api.orm_product_with_external_call,
        name="api-orm-external-call",
    ),
    path(
        "api/raw/products/<int:product_id>/with-external-call/",
        api.raw_product_with_external_call,
        name="api-raw-external-call",
    ),
    path("api/raw/leaky/", api.raw_leaky, name="api-raw-leaky"),
    path(
        "api/async/products/<int:product_id>/summary/",
        api.async_product_summary,
        name="api-async-product-summary",
    ),
    path(
        "api/async/products/<int:product_id>/with-external-call/",
        api.async_product_with_external_call,
        name="api-async-external-call",
    ),
    path(
        "api/async/products/<int:product_id>/with-time-limit/",
        api.async_product_with_time_limit,
        name="api-async-time-limit",
    ),
]
