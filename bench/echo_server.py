"""The floor's peer: a bare gRPC server process answering a unary health check.

No vmsnap code on the path — it measures what gRPC itself costs between two
Python processes over a unix socket, the transport the embedded stack uses.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer


async def main(address: str) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
