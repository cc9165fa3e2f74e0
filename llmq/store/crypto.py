"""Encryption at rest of the texts llmq keeps: job inputs, params' free text, results, attempt
outputs, uploaded compat files (Postgres) and cached answers and parked paid calls (Redis).

With `LLMQ_ENCRYPTION_KEYS` set (Fernet keys, newest first), every such value is sealed with
`cryptography`'s AES-256-GCM (see Cipher for why not the Fernet token format) where it is
written (the store functions, the cache, the parked calls) and opened where it is read; nothing
else in llmq sees ciphertext. Without it values are written in clear, as before.

A sealed value is `llmqenc1:<key id>:<base64 of nonce, ciphertext and tag>`. The prefix
tells a sealed value from a plain one written before encryption was turned on (they read as
they are); the key id (a short hash of the key, not the key) picks the key that opens it and lets
`llmq keys rotate-data` select in SQL exactly the rows not yet under the newest key, so a re-run
continues where the last one stopped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
    """AES-256-GCM under the keys, newest first: seals with the first, opens with the one the
    value names (its key id). A tampered or truncated value fails its tag and is refused.

    Not Fernet's token format: a Fernet token costs ~10-20 us to make or open (a new AES-CBC
    and HMAC context each time, and base64 of the whole token), so eight per job came to
    ~0.09-0.12 ms; GCM with one reusable context per key is a few us, base64 most of it
    (bench/crypto.py). The keys are still Fernet keys (`Fernet.generate_key()`), each used
    through its own derived AES-256 key."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._aeads: dict[str, AESGCM] = {}
        for key in keys:
            try:
                raw = base64.urlsafe_b64decode(key.encode())
            except (ValueError, binascii.Error):
                raw = b""
            if len(raw) != 32:  # never echo the key
                raise ValueError("LLMQ_ENCRYPTION_KEYS: each key must be a Fernet key")
            derived = hashlib.sha256(b"llmq-aes-256-gcm:" + raw).digest()
            self._aeads.setdefault(key_id(key), AESGCM(derived))
        newest_id = key_id(keys[0])
        self._newest = self._aeads[newest_id]
        self.newest = PREFIX + newest_id + ":"
        self._newest_b = self.newest.encode()
        # The cache's keys are an HMAC under this (derived from the newest key), so a Redis key
        # confirms no guess of a document to someone without the key.
        self.hash_keys = [hashlib.sha256(b"llmq-cache-key:" + raw_key(k)).digest() for k in keys]
        self.hash_key = self.hash_keys[0]

    def encrypt_bytes(self, data: bytes) -> bytes:
        nonce = os.urandom(12)
        # The prefix (format and key id) is authenticated too: it cannot be swapped.
        sealed = self._newest.encrypt(nonce, data, self._newest_b)
        # Standard base64 through binascii: urlsafe_b64* translate the alphabet, +40% per call.
        return self._newest_b + binascii.b2a_base64(nonce + sealed, newline=False)

    def decrypt_bytes(self, stored: bytes) -> bytes:
        if not stored.startswith(_BPREFIX):
            return stored
        head = stored[: len(self._newest_b)]
        aead = self._aeads.get(head[len(_BPREFIX) : -1].decode("ascii", "replace"))
        if aead is None or not head.endswith(b":"):
            raise DecryptionError(
                "a stored value is encrypted with a key not in LLMQ_ENCRYPTION_KEYS"
            )
        try:
            blob = binascii.a2b_base64(stored[len(head) :])
            return aead.decrypt(blob[:12], blob[12:], head)
        except (InvalidTag, ValueError, binascii.Error):
            raise DecryptionError("a stored value is damaged (its authentication failed)") from None

    def encrypt(self, text: str) -> str:
        return self.encrypt_bytes(text.encode()).decode("ascii")

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        return self.decrypt_bytes(stored.encode("ascii")).decode()


def raw_key(key: str) -> bytes:
    return base64.urlsafe_b64decode(key.encode())


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


def digests(material: bytes) -> tuple[str, ...]:
    """`digest(material)` under every configured key, newest first, then plain SHA-256: what a
    digest stored before a key rotation (or before encryption was on) may be."""
    plain = hashlib.sha256(material).hexdigest()
    c = cipher()
    if c is None:
        return (plain,)
    keyed = (hmac.new(k, material, hashlib.sha256).hexdigest() for k in c.hash_keys)
    return (*keyed, plain)


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
