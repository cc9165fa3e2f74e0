"""Encryption at rest of the texts llmq keeps: job inputs, params' free text, results, attempt
outputs, uploaded compat files (Postgres) and cached answers and parked paid calls (Redis).

With `LLMQ_ENCRYPTION_KEYS` set (Fernet keys, newest first), every such value is sealed with
`cryptography`'s MultiFernet where it is written (the store functions, the cache, the parked
calls) and opened where it is read; nothing else in llmq sees ciphertext. Without it values are
written in clear, as before.

A sealed value is `llmqenc1:<key id>:<Fernet token>`. The prefix tells a sealed value from a
plain one written before encryption was turned on (those still read as they are); the key id
(a short hash of the key, not the key) lets `llmq keys rotate-data` select in SQL exactly the
rows not yet under the newest key, so a re-run continues where the last one stopped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from llmq.errors import UserError
from llmq.settings import get_settings

PREFIX = "llmqenc1:"
_BPREFIX = PREFIX.encode()
# The params that carry client text (template variables, a chat's system prompt and messages, a
# response schema's descriptions). Everything else (max_tokens, temperature, model, style,
# no_cache, the route) stays in clear: the worker, routing and SQL read those.
SECRET_PARAMS = ("variables", "json_schema", "messages", "system")
SEALED_PARAMS = "_llmq_sealed"  # the params key holding the sealed SECRET_PARAMS


class DecryptionError(UserError):
    """A sealed value none of the configured keys opens (or no key is configured at all)."""


def key_id(key: str) -> str:
    """8 hex digits naming a key in sealed values; a hash, so it reveals nothing of the key."""
    return hashlib.sha256(b"llmq-key-id:" + key.encode()).hexdigest()[:8]


class Cipher:
    """MultiFernet over the keys, newest first: seals with the first, opens with any."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("at least one key")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except ValueError:
            # Never echo the key: name its position only.
            raise ValueError(
                "LLMQ_ENCRYPTION_KEYS: each key must be a Fernet key (32 url-safe base64 bytes; "
                "make one with `llmq keys new-encryption-key`)"
            ) from None
        self.newest = PREFIX + key_id(keys[0]) + ":"
        # The cache's keys are an HMAC under this (derived from the newest key), so a Redis key
        # confirms no guess of a document to someone without the key.
        self.hash_key = hashlib.sha256(b"llmq-cache-key:" + keys[0].encode()).digest()

    def encrypt(self, text: str) -> str:
        return self.newest + self._fernet.encrypt(text.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        token = stored[len(PREFIX) :].partition(":")[2]
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise DecryptionError(
                "a stored value is encrypted with a key not in LLMQ_ENCRYPTION_KEYS"
            ) from None

    def encrypt_bytes(self, data: bytes) -> bytes:
        return self.newest.encode() + self._fernet.encrypt(data)

    def decrypt_bytes(self, stored: bytes) -> bytes:
        if not stored.startswith(_BPREFIX):
            return stored
        token = stored[len(_BPREFIX) :].partition(b":")[2]
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise DecryptionError(
                "a stored file is encrypted with a key not in LLMQ_ENCRYPTION_KEYS"
            ) from None


@lru_cache(maxsize=4)
def _cipher_for(keys: tuple[str, ...]) -> Cipher | None:
    return Cipher(keys) if keys else None


def cipher() -> Cipher | None:
    """The configured cipher; None without LLMQ_ENCRYPTION_KEYS (values are stored in clear)."""
    keys = tuple(k.get_secret_value().strip() for k in get_settings().encryption_keys)
    return _cipher_for(tuple(k for k in keys if k))


def digest(material: bytes) -> str:
    """A hex digest naming stored material (the cache's keys): HMAC-SHA256 under a key derived
    from the newest encryption key, or plain SHA-256 without keys (the keys used before)."""
    c = cipher()
    if c is None:
        return hashlib.sha256(material).hexdigest()
    return hmac.new(c.hash_key, material, hashlib.sha256).hexdigest()


def encrypt(text: str) -> str:
    """`text` as it is to be stored: sealed under the newest key, or itself without keys."""
    c = cipher()
    return text if c is None else c.encrypt(text)


def decrypt(stored: str) -> str:
    """A stored value in clear; plain values (written before encryption was on) as they are."""
    if not stored.startswith(PREFIX):
        return stored
    c = cipher()
    if c is None:
        raise DecryptionError("a stored value is encrypted but LLMQ_ENCRYPTION_KEYS is not set")
    return c.decrypt(stored)


def encrypt_opt(text: str | None) -> str | None:
    return None if text is None else encrypt(text)


def decrypt_opt(stored: str | None) -> str | None:
    return None if stored is None else decrypt(stored)


def encrypt_bytes(data: bytes) -> bytes:
    c = cipher()
    return data if c is None else c.encrypt_bytes(data)


def decrypt_bytes(stored: bytes) -> bytes:
    if not stored.startswith(_BPREFIX):
        return stored
    c = cipher()
    if c is None:
        raise DecryptionError("a stored file is encrypted but LLMQ_ENCRYPTION_KEYS is not set")
    return c.decrypt_bytes(stored)


def seal_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Params as stored: their SECRET_PARAMS moved into one sealed value (without keys: as is)."""
    out = dict(params or {})
    c = cipher()
    secret = {k: out.pop(k) for k in SECRET_PARAMS if k in out}
    if c is None or not secret:
        out.update(secret)
        return out
    out[SEALED_PARAMS] = c.encrypt(json.dumps(secret, separators=(",", ":")))
    return out


def open_params(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stored params in clear: the sealed value opened back into its fields."""
    out = dict(stored or {})
    sealed = out.pop(SEALED_PARAMS, None)
    if isinstance(sealed, str):
        out.update(json.loads(decrypt(sealed)))
    return out
