"""The loopback stand-ins record only requests that a client really made."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.stub_servers import openai_stub


# A killed client can leave its headers alone (its body goes in a second write) or part of it.
@pytest.mark.parametrize("sent", [b"", b'{"model": "stub-'], ids=["headers", "half-a-body"])
def test_a_client_killed_mid_body_made_no_request(sent):
    with openai_stub(api_key=None) as stub:
        address = urlsplit(stub.root)
        with socket.create_connection((address.hostname, address.port)) as client:
            head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
            client.sendall(head.encode() + sent)  # then the process dies
        body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
        reply = httpx.post(f"{stub.url}/chat/completions", json=body, timeout=10)
        assert reply.status_code == 200
        assert [request.body for request in stub.requests] == [body]
