"""The transport's limit for `bench env-step`: a bare grpc.aio bidirectional stream that answers
each request with fixed bytes, and its client.

No protobuf, no servicer, no interceptors, no environment: a generic handler over raw bytes,
with the same server and channel options (rpc.RpcLimits), the same TLS settings and the same
message sizes as the environment server it is compared with. Run as its own process, like the
environment server:

    python -m rollmesh.apps.bench.bare_grpc REPLY_HEX   # TLS from ROLLMESH_TLS_* (optional)
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from ...rpc import RpcLimits, channel_credentials
from ...security.tls import TlsConfig, server_name

METHOD = "/rollmesh.bench.Echo/Step"
# The environment server's own limits: room for its 1,024 concurrent episodes.
LIMITS = RpcLimits().with_headroom_for(1024)


async def serve(reply: bytes, tls: TlsConfig, host: str = "127.0.0.1") -> None:
    async def step(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield reply

    handler = grpc.method_handlers_generic_handler(
        "rollmesh.bench.Echo", {"Step": grpc.stream_stream_rpc_method_handler(step)}
    )
    server = grpc.aio.server(options=LIMITS.server_options())
    server.add_generic_rpc_handlers((handler,))
    address = f"{host}:0"
    port = (
        server.add_secure_port(address, tls.grpc_server_credentials())
        if tls.enabled
        else server.add_insecure_port(address)
    )
    await server.start()
    # The line bench.harness waits for.
    print(f"bare echo server on {host}:{port}: {len(reply)}-byte replies", file=sys.stderr, flush=True)
    await server.wait_for_termination()


def channel(address: str, tls: TlsConfig) -> grpc.aio.Channel:
    """A channel as rpc.create_channel builds one for an environment server, without interceptors."""
    options = LIMITS.channel_options()
    if not tls.enabled:
        return grpc.aio.insecure_channel(address, options=options)
    options.append(("grpc.ssl_target_name_override", server_name("env")))
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=options)


async def run(
    address: str, request: bytes, concurrency: int, seconds: float, tls: TlsConfig
) -> tuple[float, list[float]]:
    """`concurrency` streams exchanging `request` for the server's reply as fast as they can, for
    `seconds`: (exchanges per second, the latency of each)."""
    async with channel(address, tls) as ch:
        call_step = ch.stream_stream(METHOD)
        lat: list[list[float]] = [[] for _ in range(concurrency)]
        go = asyncio.Event()
        end = 0.0

        async def player(i: int) -> None:
            call = call_step()
            await call.write(request)  # warm up the stream
            await call.read()
            await go.wait()
            while (t0 := time.perf_counter()) < end:
                await call.write(request)
                await call.read()
                lat[i].append(time.perf_counter() - t0)
            await call.done_writing()
            await call.code()

        players = [asyncio.create_task(player(i)) for i in range(concurrency)]
        await asyncio.sleep(0.5)
        end = time.perf_counter() + seconds
        go.set()
        await asyncio.gather(*players)
    flat = [x for xs in lat for x in xs]
    return len(flat) / seconds, flat


if __name__ == "__main__":
    asyncio.run(serve(bytes.fromhex(sys.argv[1]), TlsConfig.from_env()))
