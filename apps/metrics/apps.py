from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "apps.metrics"
    verbose_name = "Connection hold-time metrics"

    def ready(self) -> None:
        # Connected after django.db's own request_finished handler
        # (close_old_connections), so a request's last checkout is closed and
        # timed before the request is summed up.
        from apps.metrics import receivers

        receivers.connect()
