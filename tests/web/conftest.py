"""Fixtures: an archive server with DICOMweb on a free loopback port, a bearer token, a third-party client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dicomweb_client.api import DICOMwebClient

from aepacs.web.auth import new_token
from tests.net.conftest import Running, free_port, make_server  # noqa: F401  (make_server: a fixture)

TOKEN, TOKEN_SHA256 = new_token()


class Web:
    """A running archive with DICOMweb, and the URL, token and client that reach it."""

    def __init__(self, running: Running) -> None:
        self.running = running
        assert running.server.web is not None
        self.url = running.server.web.url
        self.client = DICOMwebClient(url=self.url, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def make_web(make_server: Callable[..., Running]) -> Callable[..., Web]:  # noqa: F811
    """Start an archive server with DICOMweb on (``retrieve_as`` and other server settings as given)."""

    def start(**server: Any) -> Web:
        return Web(make_server(server=server, web={"port": free_port(), "tokens_sha256": [TOKEN_SHA256]}))

    return start


@pytest.fixture
def web(make_web: Callable[..., Web]) -> Web:
    return make_web(retrieve_as="decoded")
