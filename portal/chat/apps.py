from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "portal.chat"
    label = "chat"
    verbose_name = "Chat and arena"
    default_auto_field = "django.db.models.BigAutoField"
