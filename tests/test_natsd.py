from __future__ import annotations

import socket

import nats
import pytest
from rollmesh.natsd import EmbeddedNats, nats_server_binary


def test_binary_found() -> None:
    assert nats_server_binary().endswith("nats-server")


def test_start_stop_removes_temp_store() -> None:
    server = EmbeddedNats().start()
    store = server.store_dir
    assert store is not None and store.exists()
    assert server.port != 0 and server.url == f"nats://127.0.0.1:{server.port}"
    server.stop()
    assert not store.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
        pass
    server.stop()  # idempotent


async def test_jetstream_publish_ack(tmp_path) -> None:
    async with EmbeddedNats(store_dir=tmp_path / "js") as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="T", subjects=["t.>"])
            ack = await js.publish("t.x", b"hello")
            assert ack.stream == "T" and ack.seq == 1
            msg = await js.get_msg("T", 1)
            assert msg.data == b"hello"
        finally:
            await nc.close()
    assert (tmp_path / "js").exists()  # a given store dir is kept


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=r"exited early(.|\n)*address already in use"):
            EmbeddedNats(port=port).start(timeout_s=5)
