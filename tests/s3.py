"""A real S3-protocol server for the tests: moto's standalone server on a loopback port.

moto answers the S3 REST protocol over HTTP as AWS does (signatures, buckets,
multipart, listings), in memory. The session's server is reached like any
S3-compatible service: ``store.endpoint_url`` and the standard ``AWS_*``
credentials, which the fixture sets (throwaway values moto accepts).
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "aepacs-test", "AWS_SECRET_ACCESS_KEY": "aepacs-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3:
    """The running server: its endpoint, and fresh buckets."""

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            if os.environ.get("CI"):
                raise AssertionError("moto[server] missing: the dev extra installs it") from None
            pytest.skip("moto[server] not installed (pip install 'aepacs[dev]')")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._saved = {k: os.environ.get(k) for k in CREDENTIALS}
        os.environ.update(CREDENTIALS)  # servers and CLIs the tests start inherit them
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def bucket(self) -> str:
        """A new empty bucket; the ``s3://`` URL of a prefix in it."""
        import s3fs

        name = f"aepacs-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True).mkdir(name)
        return f"s3://{name}/blobs"

    def stop(self) -> None:
        self._server.stop()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
