"""The compose stack, the Dockerfile and .env.example agree with the settings the service
reads (checked statically: no Docker engine is needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from photoroom_bg.service._settings import ENVIRONMENT, FILE_VARIANTS

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).parents[2]
SERVICE_VARIABLES = set(ENVIRONMENT.values()) | set(FILE_VARIANTS.values())
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}
# what the prefect executor's Prefect client reads (its server, where deferred shards'
# parameters go, and its usage events turned off)
PREFECT_VARIABLES = {"PREFECT_API_URL", "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "DO_NOT_TRACK"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())  # type: ignore[no-any-return]


def container_port(mapping: str) -> tuple[str, int, int]:
    host_ip, host_port, port = mapping.rsplit(":", 2)
    return host_ip, int(host_port), int(port)


def test_the_stack_has_minio_and_the_service_built_from_this_repository() -> None:
    services = compose()["services"]
    assert {"minio", "service"} <= set(services)
    service = services["service"]
    assert service["build"]["context"] == "."
    assert (ROOT / "Dockerfile").is_file()
    assert service["depends_on"]["minio"]["condition"] == "service_healthy"


def test_every_published_port_is_on_loopback() -> None:
    for name, service in compose()["services"].items():
        for mapping in service.get("ports", []):
            host_ip, _, _ = container_port(mapping.split()[0])
            assert host_ip == "127.0.0.1", (name, mapping)


def test_service_environment_names_are_settings_the_service_reads() -> None:
    environment = compose()["services"]["service"]["environment"]
    names = set(environment)
    known = SERVICE_VARIABLES | AWS_VARIABLES | PREFECT_VARIABLES
    assert names <= known, names - known
    for required in ("PHOTOROOM_API_KEY", "PHOTOROOM_BG_TOKENS", "PHOTOROOM_BG_SINK"):
        assert required in names
    assert str(environment["PHOTOROOM_BG_SINK"]).split(":-")[-1].startswith("s3://")


def test_the_service_reaches_minio_on_its_s3_port_and_listens_where_published() -> None:
    services = compose()["services"]
    endpoint = services["service"]["environment"]["PHOTOROOM_BG_S3_ENDPOINT_URL"]
    match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", endpoint)
    assert match is not None
    host, port = match.group(1), int(match.group(2))
    assert host == "minio"
    assert port in {container_port(m)[2] for m in services["minio"]["ports"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    command = re.search(r"^CMD \[(.*)\]$", dockerfile, re.MULTILINE)
    assert command is not None
    args = [a.strip().strip('"') for a in command.group(1).split(",")]
    assert args[:2] == ["photoroom-bg", "serve"]
    listen = int(args[args.index("--port") + 1])
    assert f"EXPOSE {listen}" in dockerfile
    assert [container_port(m)[2] for m in services["service"]["ports"]] == [listen]
    assert services["service"]["environment"]["PHOTOROOM_BG_STATE_DIR"] in str(
        services["service"]["volumes"]
    )
    assert "/health/ready" in str(services["service"]["healthcheck"]["test"])
    assert 'pip install ".[${EXTRAS}]"' in dockerfile
    assert "ARG EXTRAS=service,s3\n" in dockerfile
    assert set(services["service"]["build"]["args"]["EXTRAS"].split(",")) == {
        "service",
        "s3",
        "prefect",
    }


def test_the_service_can_hand_jobs_to_the_prefect_workers() -> None:
    """With PHOTOROOM_BG_EXECUTOR=prefect the service reaches the workers' Prefect server and
    shares their volume (deferred shards' parameters) and their storage."""
    services = compose()["services"]
    service = services["service"]["environment"]
    worker = services["prefect-worker-1"]["environment"]
    assert service["PHOTOROOM_BG_EXECUTOR"] == "${PHOTOROOM_BG_EXECUTOR:-local}"
    assert service["PREFECT_API_URL"] == worker["PREFECT_API_URL"]
    shared = service["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]
    assert shared == worker["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]
    volume = "prefect-shared:" + shared.rsplit("/", 1)[0]
    assert volume in services["service"]["volumes"]
    assert volume in services["prefect-worker-1"]["volumes"]
    assert service["PHOTOROOM_BG_S3_ENDPOINT_URL"] == worker["AWS_ENDPOINT_URL_S3"]


def test_phone_homes_are_off() -> None:
    minio = compose()["services"]["minio"]["environment"]
    assert minio["MINIO_UPDATE"] == "off"
    assert minio["MINIO_CALLHOME_ENABLE"] == "off"
    services = compose()["services"]
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    for name in ("service", "prefect-server", "prefect-worker-1"):
        assert services[name]["environment"]["DO_NOT_TRACK"] == "1", name


def test_env_example_defines_what_compose_interpolates_and_names_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yaml").read_text()))
    assert used <= defined, used - defined
    assert set(ENVIRONMENT.values()) <= defined, set(ENVIRONMENT.values()) - defined
    assert not re.search(r"^PHOTOROOM_BG_TOKENS=\S", text, re.MULTILINE)  # no usable default


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match is not None, duration
    assert any(match.groups()), duration
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_a_stopped_container_is_given_the_time_its_calls_under_way_need() -> None:
    # Docker kills a container 10 s after SIGTERM unless told otherwise: the service's and
    # the workers' drains of their paid calls (up to 30 s and 50 s) were cut short, and the
    # next run paid for those images again
    import inspect

    from photoroom_bg import BatchRemover
    from photoroom_bg.prefect._shard import DRAIN_SECONDS
    from photoroom_bg.service._executor import STOP_GRACE_SECONDS
    from photoroom_bg.service._server import GRACEFUL_SHUTDOWN_SECONDS

    services = compose()["services"]
    service_needs = GRACEFUL_SHUTDOWN_SECONDS + STOP_GRACE_SECONDS
    assert _seconds(services["service"].get("stop_grace_period", "10s")) > service_needs
    exit_timeout = inspect.signature(BatchRemover).parameters["exit_timeout"].default
    workers = [s for s in services.values() if "task serve" in str(s.get("command", ""))]
    assert len(workers) == 2
    for worker in workers:
        needs = DRAIN_SECONDS + exit_timeout
        assert _seconds(worker.get("stop_grace_period", "10s")) > needs
