"""What can go wrong in local inference. Callers map these to HTTP errors; this library knows no HTTP."""
from __future__ import annotations


class InferenceError(Exception):
    """Base class. `code` is stable and machine-readable."""

    code = "inference_error"


class InvalidInput(InferenceError):
    """The caller's input cannot be processed (empty text, unknown language, not audio, too long…)."""

    code = "invalid_input"


class ModelLoadError(InferenceError):
    """Weights are missing, incompatible, or in a format we refuse to load."""

    code = "model_load_failed"


class ModelNotLoaded(InferenceError):
    code = "model_not_loaded"


class InferenceTimeout(InferenceError):
    code = "inference_timeout"


class UnknownBackend(InferenceError):
    code = "unknown_backend"


class ModelServerUnavailable(InferenceError):
    """No model server could be reached, or it refused this client (a missing or wrong secret)."""

    code = "model_server_unavailable"
