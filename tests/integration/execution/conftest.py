"""Fixtures for the execution-layer Docker tests (engine, test image, executor)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest
from docker_fixtures import docker_client, ensure_test_image  # tests/integration is on sys.path

from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    client = docker_client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_engine: docker.DockerClient) -> str:
    return ensure_test_image(docker_engine)


@pytest.fixture
def instance() -> str:
    """A label value of its own per test, so tests never see each other's containers."""
    return "test-" + secrets.token_hex(4)


@pytest.fixture
async def executor(
    busybox_image: str, tmp_path: Path, instance: str, docker_engine: docker.DockerClient
) -> AsyncIterator[DockerExecutor]:
    policy = DockerPolicy(workspace_root=tmp_path / "workspaces", instance=instance)
    ex = await DockerExecutor.connect(policy)
    yield ex
    for c in docker_engine.containers.list(all=True, filters={"label": f"dgpu.instance={instance}"}):
        c.remove(force=True)
    await ex.close()
