"""docker-compose.yml describes the production stack; Docker cannot run here, so it is checked
with `docker compose config` when the compose plugin exists, and structurally always."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_compose_file_describes_the_stack() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {
        "postgres", "pgbouncer", "redis", "migrate", "api", "worker", "flower"
    }  # fmt: skip
    for name in ("postgres", "pgbouncer", "redis", "api", "worker", "flower"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["command"] == ["llmq", "migrate"]
    assert services["migrate"]["restart"] == "no"
    # Scalable with --scale worker=N: no fixed name, no host port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
        # The API and workers reach Postgres through PgBouncer in transaction mode.
        assert "@pgbouncer:6432/" in services[name]["environment"]["DATABASE_URL"]
        assert services[name]["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
    assert services["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    assert "@postgres:5432/" in services["migrate"]["environment"]["DATABASE_URL"]
    assert "--basic-auth" in " ".join(services["flower"]["command"])
    # The semantic cache needs pgvector in the same Postgres.
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg")


def _compose_command() -> list[str] | None:
    """`docker compose` (the plugin), else the standalone `docker-compose` (e.g. Debian's)."""
    docker = shutil.which("docker")
    if (
        docker is not None
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone is not None else None


def test_docker_compose_config_validates() -> None:
    compose = _compose_command()
    if compose is None:
        # The structural test above still ran; this one needs docker compose.
        import pytest

        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    result = subprocess.run(
        [*compose, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"FLOWER_PASSWORD": "x", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
