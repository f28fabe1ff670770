from django.apps import AppConfig


class BackendsConfig(AppConfig):
    name = "backends"
    verbose_name = "Connection-release database engines"

    def ready(self) -> None:
        from backends import checks  # noqa: F401  (registers the system checks)
