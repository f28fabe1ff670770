from django.urls import path

from apps.dashboard import views

urlpatterns = [
    path("pool/", views.dashboard, name="pool-dashboard"),
    path("pool/panel/", views.panel, name="pool-panel"),
]
