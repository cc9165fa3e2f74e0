"""Configuration: the optional llmq.toml, its precedence under the environment, clear errors,
and `llmq config check` (which never prints a secret)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmq.config_check import ConfigError, load_settings, mask_url_password
from llmq.settings import Settings

TOML = """
database_url = "postgresql+psycopg://llmq:file-pw@db:5432/llmq"
api_port = 8001
default_chain = ["openai:gpt-4o-mini", "local:extractive"]
input_guardrails = ["prompt_injection", "pii"]
banned_terms = ["quux"]

[rate_limits."openai:gpt-4o-mini"]
requests = 500
tokens = 200000

[template_experiments.summarize]
version = 2
percent = 10

[template_short_input.prompt]
link = "openai:gpt-5-nano"
max_input_tokens = 400

[template_max_input_tokens]
prompt = 8000
"""
FERNET_KEYS = (
    "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=",
    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
)
# Settings the test process itself has (the session's stack) that the file sets too.
FILE_SETTINGS = ("DATABASE_URL", "LLMQ_DATABASE_URL", "LLMQ_API_PORT", "LLMQ_CONFIG")


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (no .env, no llmq.toml) and none of the file's settings in
    the environment."""
    monkeypatch.chdir(tmp_path)
    for name in FILE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_toml_tables_load(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_CONFIG", str(_write(workdir / "elsewhere.toml", TOML)))
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://llmq:file-pw@db:5432/llmq"
    assert settings.api_port == 8001
    assert settings.default_chain == ["openai:gpt-4o-mini", "local:extractive"]
    assert settings.input_guardrails == ["prompt_injection", "pii"]
    assert settings.banned_terms == ["quux"]
    assert settings.rate_limits == {"openai:gpt-4o-mini": {"requests": 500, "tokens": 200_000}}
    assert settings.template_experiments == {"summarize": {"version": 2, "percent": 10}}
    assert settings.template_short_input == {
        "prompt": {"link": "openai:gpt-5-nano", "max_input_tokens": 400}
    }
    assert settings.template_max_input_tokens == {"prompt": 8000}


def test_llmq_toml_in_the_working_directory_is_read_without_llmq_config(workdir: Path) -> None:
    _write(workdir / "llmq.toml", "api_port = 8002\n")
    assert Settings().api_port == 8002


def test_without_a_file_the_defaults_hold(workdir: Path) -> None:
    assert Settings().api_port == 8000


def test_environment_and_dotenv_override_the_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMQ_CONFIG", str(_write(workdir / "llmq.toml", TOML)))
    _write(workdir / ".env", "LLMQ_MAX_OUTPUT_TOKENS=77\nLLMQ_API_PORT=9100\n")
    monkeypatch.setenv("LLMQ_API_PORT", "9000")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://env@db/llmq")
    settings = Settings()
    assert settings.api_port == 9000  # environment > .env > file
    assert settings.max_output_tokens == 77  # .env > file (and defaults)
    assert settings.database_url == "postgresql+psycopg://env@db/llmq"  # by its alias
    assert settings.rate_limits  # what the environment does not set still comes from the file
    assert Settings(api_port=1234).api_port == 1234  # arguments > everything


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("api_port = [", [r"not valid TOML"]),
        ("api_prt = 1\ncache_ttls = 2\n", [
            r"bad.toml: unknown setting 'api_prt'", r"bad.toml: unknown setting 'cache_ttls'",
        ]),
        ('api_port = "x"\ncache_scope = "everyone"\n', [
            r"^api_port \(LLMQ_API_PORT\): Input should be a valid integer",
            r"^cache_scope \(LLMQ_CACHE_SCOPE\): Input should be 'tenant' or 'global'",
        ]),
        ("[template_experiments.summarize]\nversion = 9\npercent = 10\n", [
            r"^template_experiments\['summarize'\]: template 'summarize' has no version 9",
        ]),
        ('[template_short_input.nope]\nlink = "openai:gpt-5-nano"\nmax_input_tokens = 5\n', [
            r"^template_short_input\['nope'\]: unknown template 'nope'",
        ]),
    ],
)  # fmt: skip
def test_an_invalid_file_is_one_clear_line_per_problem(
    workdir: Path, text: str, problems: list[str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(_write(workdir / "bad.toml", text))
    lines = str(raised.value).splitlines()
    assert len(lines) == len(problems)
    for problem in problems:
        assert any(re.search(problem, line) for line in lines), (problem, lines)


def test_a_named_file_that_does_not_exist_is_an_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMQ_CONFIG", str(workdir / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml: no such configuration file"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://llmq:s3cret@db:5432/llmq", "postgresql+psycopg://llmq:********@db:5432/llmq"),
        ("redis://:s3cret@redis:6379/0", "redis://:********@redis:6379/0"),
        ("postgresql://llmq:p@ss/w0rd@db/llmq", "postgresql://llmq:********@db/llmq"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("postgresql://llmq@db/llmq", "postgresql://llmq@db/llmq"),
    ],
)  # fmt: skip
def test_url_passwords_are_masked(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown


def _config_check(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Only what the command is given: none of the test session's own settings.
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "config", "check", *args],
        cwd=workdir,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_check_prints_the_effective_settings_without_secrets(workdir: Path) -> None:
    _write(workdir / "llmq.toml", TOML)
    done = _config_check(
        workdir,
        DATABASE_URL="postgresql+psycopg://llmq:db-pa55word@db:5432/llmq",
        REDIS_URL="redis://:redis-pa55word@redis:6379/0",
        OPENAI_API_KEY="sk-test-0123456789abcdef",
        LLMQ_FLOWER_PASSWORD="flower-pa55word",
        LLMQ_WEBHOOK_SIGNING_KEY="signing-key-value",
        LLMQ_ENCRYPTION_KEYS=f"{FERNET_KEYS[0]},{FERNET_KEYS[1]}",
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    for secret in ("db-pa55word", "redis-pa55word", "sk-test-0123456789abcdef",
                   "flower-pa55word", "signing-key-value", "file-pw", *FERNET_KEYS):  # fmt: skip
        assert secret not in output
    lines = done.stdout.splitlines()
    assert 'database_url = "postgresql+psycopg://llmq:********@db:5432/llmq"' in lines
    assert 'redis_url = "redis://:********@redis:6379/0"' in lines
    assert 'openai_api_key = "********"' in lines
    assert 'encryption_keys = ["********", "********"]' in lines  # how many, never which
    assert "anthropic_api_key = null" in lines  # unset is shown as unset
    assert 'rate_limits = {"openai:gpt-4o-mini": {"requests": 500, "tokens": 200000}}' in lines
    assert "api_port = 8001" in lines
    assert "# configuration file: llmq.toml" in lines


def test_config_check_fails_with_every_problem_and_no_traceback(workdir: Path) -> None:
    bad = _write(workdir / "bad.toml", 'api_port = "x"\nnope = 1\n')
    done = _config_check(workdir, "--file", str(bad))
    assert done.returncode == 1
    assert done.stderr.strip() == f"{bad}: unknown setting 'nope'"  # the file is read first
    assert "Traceback" not in done.stderr
    bad.write_text('api_port = "x"\n')
    done = _config_check(workdir, "--file", str(bad), LLMQ_MAX_OUTPUT_TOKENS="many")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "max_output_tokens (LLMQ_MAX_OUTPUT_TOKENS): Input should be a valid integer, "
        "unable to parse string as an integer",
        "api_port (LLMQ_API_PORT): Input should be a valid integer, "
        "unable to parse string as an integer",
    ]
    assert done.stdout == ""


def test_the_documented_example_file_is_valid(workdir: Path) -> None:
    page = Path(__file__).parents[2] / "docs" / "configuration.md"
    example = page.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    settings = load_settings(_write(workdir / "llmq.toml", example))
    assert settings.rate_limits == {"openai:gpt-4o-mini": {"requests": 500, "tokens": 200_000}}
    assert settings.template_short_input["summarize"] == {
        "link": "openai:gpt-5-nano",
        "max_input_tokens": 400,
    }
