"""Encryption at rest (llmq/store/crypto.py): what is sealed, what stays readable, rotation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from llmq.execution.cache import CachedResult, ResultCache, cache_key
from llmq.settings import Settings, get_settings
from llmq.store import crypto
from llmq.store.rotation import _reseal_params

K1, K2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()


@pytest.fixture()
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set LLMQ_ENCRYPTION_KEYS for this test ("" = unset)."""

    def use(value: str) -> None:
        monkeypatch.setenv("LLMQ_ENCRYPTION_KEYS", value)
        get_settings.cache_clear()

    yield use
    monkeypatch.delenv("LLMQ_ENCRYPTION_KEYS", raising=False)
    get_settings.cache_clear()


def test_without_keys_everything_is_stored_as_today(keys: Callable[[str], None]) -> None:
    keys("")
    assert crypto.cipher() is None
    assert crypto.encrypt("hello") == "hello"
    assert crypto.encrypt_bytes(b"file") == b"file"
    params = {"variables": {"q": "why"}, "max_tokens": 5}
    assert crypto.seal_params(params) == params


def test_a_sealed_value_hides_the_text_and_reads_back(keys: Callable[[str], None]) -> None:
    keys(K1)
    stored = crypto.encrypt("the secret document")
    assert stored.startswith(crypto.PREFIX + crypto.key_id(K1) + ":")
    assert "secret" not in stored and K1 not in stored
    assert crypto.decrypt(stored) == "the secret document"
    assert crypto.decrypt_bytes(crypto.encrypt_bytes(b"\x00bytes")) == b"\x00bytes"
    # A row written before encryption was turned on still reads.
    assert crypto.decrypt("written in clear") == "written in clear"
    assert crypto.decrypt_bytes(b"plain file") == b"plain file"


def test_a_tampered_or_relabelled_value_is_refused(keys: Callable[[str], None]) -> None:
    keys(f"{K1},{K2}")
    stored = crypto.encrypt("amount: 100")
    flipped = stored[:-6] + ("A" if stored[-6] != "A" else "B") + stored[-5:]
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(flipped)
    relabelled = crypto.PREFIX + crypto.key_id(K2) + stored[len(crypto.PREFIX) + 8 :]
    with pytest.raises(crypto.DecryptionError):  # the key id is authenticated too
        crypto.decrypt(relabelled)


def test_params_keep_what_the_worker_and_sql_need_in_clear(keys: Callable[[str], None]) -> None:
    keys(K1)
    params = {
        "variables": {"question": "secret question"},
        "json_schema": {"description": "secret schema"},
        "max_tokens": 50,
        "no_cache": True,
        "style": "bullets",
        "model": "openai:gpt-4o-mini",
    }
    sealed = crypto.seal_params(params)
    assert "secret" not in str(sealed)
    assert {k: sealed[k] for k in ("max_tokens", "no_cache", "style", "model")} == {
        "max_tokens": 50, "no_cache": True, "style": "bullets", "model": "openai:gpt-4o-mini",
    }  # fmt: skip
    assert crypto.open_params(sealed) == params
    assert crypto.open_params({"variables": {"q": "old row"}}) == {"variables": {"q": "old row"}}


def test_rotation_old_key_still_reads_new_writes_use_the_newest(
    keys: Callable[[str], None],
) -> None:
    keys(K1)
    old = crypto.encrypt("before rotation")
    old_params = crypto.seal_params({"variables": {"q": "v"}, "max_tokens": 3})
    keys(f"{K2},{K1}")
    assert crypto.decrypt(old) == "before rotation"
    assert crypto.encrypt("x").startswith(crypto.PREFIX + crypto.key_id(K2))
    cipher = crypto.cipher()
    assert cipher is not None
    resealed = _reseal_params(old_params, cipher)
    assert resealed[crypto.SEALED_PARAMS].startswith(cipher.newest)
    keys(K2)  # the old key removed: what was re-sealed still reads, what was not does not
    assert crypto.open_params(resealed) == {"variables": {"q": "v"}, "max_tokens": 3}
    with pytest.raises(crypto.DecryptionError, match="not in LLMQ_ENCRYPTION_KEYS"):
        crypto.decrypt(old)
    keys("")
    with pytest.raises(crypto.DecryptionError, match="LLMQ_ENCRYPTION_KEYS is not set"):
        crypto.decrypt(old)


def test_a_bad_key_is_refused_at_start_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(encryption_keys=f"{K1},not-a-fernet-key")  # type: ignore[arg-type]
    assert "key 2 is not a Fernet key" in str(caught.value)
    assert "not-a-fernet-key" not in str(caught.value).split("input_value")[0]
    assert [
        k.get_secret_value() for k in Settings(encryption_keys=f'["{K1}"]').encryption_keys
    ] == [K1]  # type: ignore[arg-type]


class _FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def set(self, key: str, value: str, ex: int) -> None:
        self.data[key] = value


def test_the_cache_stores_sealed_answers_under_a_keyed_hash(keys: Callable[[str], None]) -> None:
    material = (["local:extractive"], "summarize", 1, "the prompt", {})
    keys("")
    plain_key = cache_key(*material, scope="tenant", tenant_id="t")
    keys(K1)
    keyed = cache_key(*material, scope="tenant", tenant_id="t")
    assert keyed != plain_key and keyed == cache_key(*material, scope="tenant", tenant_id="t")
    client = _FakeRedis()
    cache = ResultCache(client, ttl_s=60)  # type: ignore[arg-type]
    cache.put(keyed, CachedResult("the secret answer", "local", "extractive"))
    assert "secret" not in client.data[keyed]
    assert cache.get(keyed) == CachedResult("the secret answer", "local", "extractive")


def test_digests_are_keyed_and_still_match_across_a_rotation(
    keys: Callable[[str], None],
) -> None:
    keys("")
    assert crypto.digests(b"doc") == (crypto.digest(b"doc"),)  # plain SHA-256, as before
    keys(K1)
    before = crypto.digest(b"doc")
    assert before not in crypto.digests(b"another doc")
    keys(f"{K2},{K1}")
    assert crypto.digest(b"doc") != before  # new writes: the new key
    assert before in crypto.digests(b"doc")  # an idempotent retry stored before still matches
