"""Docker helpers for integration tests: engine check and a locally built busybox image.

No registry is reachable, so the test image is ``docker import`` of a folder holding Debian's
``busybox-static`` plus applet symlinks. In CI (``CI=true``) a missing engine or busybox is a
failure; elsewhere the Docker tests skip and say why.
"""

from __future__ import annotations

import io
import ipaddress
import os
import shutil
import tarfile
from pathlib import Path

import docker
import docker.errors
import pytest
import requests.exceptions

TEST_IMAGE = "dgpu-test/busybox:1"
APPLETS = (
    "sh", "echo", "sleep", "cat", "env", "ls", "ip", "head", "tail", "dd", "id", "touch",
    "seq", "nc", "true", "false", "wc", "grep", "mkdir", "rm", "yes", "kill", "trap", "printf",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(why: str) -> None:
    """Fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"Docker tests must run in CI: {why}", pytrace=False)
    pytest.skip(f"Docker tests skipped: {why}")


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        unavailable(f"no reachable Docker engine ({exc})")
        raise  # unreachable: unavailable() raises
    return client


def busybox_rootfs_tar() -> bytes:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).is_file():
        unavailable("busybox-static is not installed (apt-get install busybox-static)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "inputs", "outputs", "etc"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for name in APPLETS:
            link = tarfile.TarInfo(f"bin/{name}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


def ensure_test_image(client: docker.DockerClient, tag: str = TEST_IMAGE) -> str:
    """Import the busybox image under ``tag`` unless it is already there."""
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    repo, _, version = tag.partition(":")
    client.api.import_image_from_data(busybox_rootfs_tar(), repository=repo, tag=version or "latest")
    client.images.get(tag)
    return tag


def bridge_gateway(client: docker.DockerClient) -> str:
    """The host's address on Docker's default bridge (what a container would dial)."""
    config = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))  # engine default: .1
