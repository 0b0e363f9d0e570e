from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from audit import admin_actions, signals  # noqa: F401  (connects the receivers)

        admin_actions.audit_every_action()
