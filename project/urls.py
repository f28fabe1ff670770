from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("apps.probes.urls")),
    path("", include("apps.metrics.urls")),
    path("", include("apps.dashboard.urls")),
    path("", include("apps.storefront.urls")),
    path("", include("apps.catalog.urls")),
    path("", include("apps.orders.urls")),
    path("", include("apps.sales.urls")),
]

# JSON 404s under /api/, the site's own page elsewhere.
handler404 = "apps.storefront.views.not_found"
# 503 with Retry-After for transient database trouble, Django's 500 page for the rest.
handler500 = "apps.web.unavailable.server_error"
