"""Encryption at rest for provider API keys (Fernet: AES-128-CBC + HMAC-SHA256)."""
from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@functools.cache
def _fernet() -> MultiFernet:
    """MODELGATE_ENCRYPTION_KEYS (newest first, for rotation), else a key derived from SECRET_KEY."""
    keys = settings.MODELGATE_ENCRYPTION_KEYS
    if not keys:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"modelgate", info=b"provider-credentials").derive(
            settings.SECRET_KEY.encode()
        )
        keys = [base64.urlsafe_b64encode(derived).decode()]
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"MODELGATE_ENCRYPTION_KEYS holds a key that is not a Fernet key: {exc}") from None


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "A stored provider credential cannot be decrypted: SECRET_KEY or MODELGATE_ENCRYPTION_KEYS changed."
        ) from None
