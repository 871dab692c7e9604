from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """The local inference library: backends and the model pool. It has no models of its own."""

    name = "inference"
    verbose_name = "Local inference"
