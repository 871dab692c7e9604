"""Encryption at rest (Fernet: AES-128-CBC + HMAC-SHA256) for the secrets Modelgate must be able to
read back: provider API keys and webhook signing secrets. Each kind of secret has its own key, so a
key recovered for one kind opens nothing of the other."""
from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Vault:
    """Encrypts and decrypts one kind of secret.

    Its keys: each of MODELGATE_ENCRYPTION_KEYS (newest first, for rotation), else SECRET_KEY, run
    through HKDF with this vault's `purpose`. `reads_also` is a vault whose keys this one still
    accepts when decrypting (secrets written before this kind had keys of its own), never to encrypt.
    """

    purpose: str
    what: str  # how errors name the secret: "provider credential"
    derive_configured: bool = True  # False: MODELGATE_ENCRYPTION_KEYS are used as they are (as stored before)
    reads_also: Vault | None = None

    def encrypt(self, plaintext: str) -> str:
        return _fernet(self).encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return _fernet(self).decrypt(token.encode()).decode()
        except InvalidToken:
            raise ImproperlyConfigured(
                f"A stored {self.what} cannot be decrypted: SECRET_KEY or MODELGATE_ENCRYPTION_KEYS changed."
            ) from None

    def keys(self) -> list[bytes]:
        configured = [key.encode() if isinstance(key, str) else key for key in settings.MODELGATE_ENCRYPTION_KEYS]
        if not configured:
            return [_derive(settings.SECRET_KEY.encode(), self.purpose)]
        for key in configured:
            _checked(key)
        return [_derive(key, self.purpose) for key in configured] if self.derive_configured else configured


PROVIDER_CREDENTIALS = Vault(purpose="provider-credentials", what="provider credential", derive_configured=False)
WEBHOOK_SECRETS = Vault(purpose="webhook-secrets", what="webhook signing secret", reads_also=PROVIDER_CREDENTIALS)


def _derive(material: bytes, purpose: str) -> bytes:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"modelgate", info=purpose.encode()).derive(material)
    return base64.urlsafe_b64encode(derived)


def _checked(key: bytes) -> Fernet:
    try:
        return Fernet(key)
    except ValueError as exc:
        raise ImproperlyConfigured(f"MODELGATE_ENCRYPTION_KEYS holds a key that is not a Fernet key: {exc}") from None


@functools.cache
def _fernet(vault: Vault) -> MultiFernet:
    keys = vault.keys() + (vault.reads_also.keys() if vault.reads_also else [])
    return MultiFernet([_checked(key) for key in keys])
