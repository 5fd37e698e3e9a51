"""A third real Bayeux client: aiocometd-ng (PyPI, asyncio + aiohttp), long-polling only.

    python aiocometd_agent.py URL CHANNEL COUNT

Subscribes to CHANNEL, prints ``subscribed``, publishes one message ``{"from": "aiocometd"}``,
then prints each message received on CHANNEL as one JSON line until COUNT have arrived.
"""
import asyncio
import json
import sys

from aiocometd_ng import Client, ConnectionType


async def main(url: str, channel: str, count: int) -> None:
    async with Client(url, ConnectionType.LONG_POLLING) as client:
        await client.subscribe(channel)
        print("subscribed", flush=True)
        await client.publish(channel, {"from": "aiocometd"})
        seen = 0
        async for message in client:
            if message.get("channel") == channel:
                print(json.dumps(message), flush=True)
                seen += 1
                if seen >= count:
                    return


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
