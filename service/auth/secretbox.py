"""AES-GCM sealing under keys derived from XCLOUD_SECRET_KEY (HKDF, one key per use).

A service secret is sealed with the service id as associated data, so a dumped row is
useless without the key and cannot be moved to another service id; stored idempotent
answers use a key of their own (`info`)."""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretBox:
    # `info` separates the keys of different uses (service secrets, stored answers):
    # one derived key never seals two kinds of data.
    def __init__(self, secret_key: str, *, info: bytes = b"xcloud service secrets v1") -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
            secret_key.encode("utf-8")
        )
        self._aead = AESGCM(key)

    def seal(self, service_id: str, secret: str) -> bytes:
        return self.seal_bytes(service_id.encode(), secret.encode("utf-8"))

    def open(self, service_id: str, sealed: bytes) -> bytes:
        return self.open_bytes(service_id.encode(), sealed)

    def seal_bytes(self, associated: bytes, data: bytes) -> bytes:
        """nonce || ciphertext; opening needs the same associated data."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data, associated)

    def open_bytes(self, associated: bytes, sealed: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], associated)
