"""aiocoap (Python, DTLS through tinydtls) against Moat's CoAP endpoint, run
by tests/coap.rs: observes a channel's messages, POSTs one JSON message
confirmably over DTLS with a pre-shared key, and waits to hear it back as a
notification. Then POSTs to a channel it may not use and expects 4.03.

usage: coap_aiocoap.py HOST PORT IDENTITY PSK CHANNEL OTHER_CHANNEL

Prints one line per step; exits non-zero on the first surprise.
"""

import asyncio
import json
import sys

import aiocoap
from aiocoap import Code, Context, Message

host, port, identity, psk, channel, other = sys.argv[1:7]
base = f"coaps://{host}:{port}"
TIMEOUT = 20


async def main():
    ctx = await Context.create_client_context()
    ctx.client_credentials.load_from_dict(
        {
            f"{base}/*": {
                "dtls": {
                    "psk": psk.encode(),
                    "client-identity": identity.encode(),
                }
            }
        }
    )

    observe = ctx.request(
        Message(code=Code.GET, uri=f"{base}/channels/{channel}/messages", observe=0)
    )
    first = await asyncio.wait_for(observe.response, TIMEOUT)
    print("observe:", first.code, flush=True)
    if not first.code.is_successful():
        sys.exit(f"observe refused: {first.code} {first.payload!r}")
    notifications = observe.observation.__aiter__()

    body = json.dumps({"aiocoap": True}).encode()
    post = Message(
        code=Code.POST,
        uri=f"{base}/channels/{channel}/messages/py",
        payload=body,
        content_format=50,
    )
    answer = await asyncio.wait_for(ctx.request(post).response, TIMEOUT)
    print("post:", answer.code, "mtype:", answer.mtype, flush=True)
    if answer.code != Code.CHANGED:
        sys.exit(f"post refused: {answer.code} {answer.payload!r}")

    while True:
        note = await asyncio.wait_for(notifications.__anext__(), TIMEOUT)
        print("notification:", note.code, note.payload[:200], flush=True)
        if b"aiocoap" in note.payload:
            break

    refused = Message(
        code=Code.POST,
        uri=f"{base}/channels/{other}/messages",
        payload=body,
        content_format=50,
    )
    answer = await asyncio.wait_for(ctx.request(refused).response, TIMEOUT)
    print("other channel:", answer.code, flush=True)
    if answer.code != Code.FORBIDDEN:
        sys.exit(f"expected 4.03 on another channel, got {answer.code}")

    observe.observation.cancel()
    await ctx.shutdown()
    print("done", flush=True)


asyncio.run(main())
