from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "teams"
    verbose_name = "Teams and budgets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from teams import signals  # noqa: F401  (connects the receivers)
        from teams.roles import ensure_roles

        post_migrate.connect(ensure_roles, dispatch_uid="teams.ensure_roles")
