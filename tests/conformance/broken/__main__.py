"""Serve one broken variant as its own process until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from tests.conformance.broken import VARIANTS


async def serve(name: str, address: str) -> None:
    server = await VARIANTS[name](address)
    print(json.dumps({"serving": [address], "variant": name}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.variant, args.listen))


if __name__ == "__main__":
    main()
