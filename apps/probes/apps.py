from django.apps import AppConfig


class ProbesConfig(AppConfig):
    name = "apps.probes"
    verbose_name = "Container probes"
