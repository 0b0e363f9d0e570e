from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "teams"
    verbose_name = "Teams and budgets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from teams import signals  # noqa: F401  (connects the receivers)
