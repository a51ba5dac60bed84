"""No course helper reaches the network when offline."""
import socket

import numpy as np
import pytest

import course_lib as cl


@pytest.fixture
def no_network(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cl.config.is_online(refresh=True)
    yield calls
    assert calls == [], f"a helper tried to connect: {calls[:3]}"


def test_data_helpers_stay_offline(no_network):
    cl.data.load_fashion_mnist("test")
    cl.data.make_scenes(50, "heldout", seed=0)
    cl.data.load_photo("chelsea")
    cl.data.procedural_texture("blobs", seed=0)
    cl.cache.cached("test/no-network", lambda: np.arange(3))
    cl.cli.doctor_report()
