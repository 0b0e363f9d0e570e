from django.apps import AppConfig


class SignedConfig(AppConfig):
    name = "portal.signed"
    label = "signed"
    verbose_name = "Signed API"
    default_auto_field = "django.db.models.BigAutoField"
