from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Engines, the worker and their commands (`runworker`, `chat`).

    The engine modules import no Django; this app exists so that Django finds
    the management commands.
    """

    name = "inference"
    verbose_name = "Inference"
