"""A LiveChat client built from relaymesh's protos alone.

The test suite generates Python stubs from proto/ with grpcio-tools, then
runs this script against a live mesh (tests/integration/python_client.rs).
It speaks the gateway's gRPC client API, then gRPC-Web over plain HTTP/1.1,
and prints one JSON line per observation for the test to check.

Usage: livechat_client.py HOST:PORT TOKEN USER CHANNEL SSRC
"""

import http.client
import json
import queue
import struct
import sys
import threading

import grpc

from relaymesh.client.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, livechat_pb2

TIMEOUT = 10


def report(**fields):
    print(json.dumps(fields), flush=True)


class Connection:
    """A bidirectional Livechat stream: requests from a queue, events read on a thread."""

    def __init__(self, stub, token):
        self.requests = queue.Queue()
        self.events = queue.Queue()
        self.nonce = 0
        responses = stub.Livechat(
            iter(self.requests.get, None),
            metadata=[("authorization", f"Bearer {token}")],
        )
        threading.Thread(target=self._read, args=(responses,), daemon=True).start()

    def _read(self, responses):
        try:
            for r in responses:
                self.events.put(r)
        except grpc.RpcError as e:
            self.events.put(e)

    def send(self, **request):
        self.nonce += 1
        nonce = f"py{self.nonce}"
        self.requests.put(livechat_pb2.LivechatRequest(nonce=nonce, **request))
        return nonce

    def next(self, kind):
        """The next event of `kind` (a oneof field name), skipping others."""
        while True:
            e = self.events.get(timeout=TIMEOUT)
            if isinstance(e, Exception):
                raise e
            if e.WhichOneof("event") == kind:
                return getattr(e, kind)

    def answer(self, nonce):
        """The ACK or ERROR carrying `nonce`."""
        while True:
            e = self.events.get(timeout=TIMEOUT)
            if isinstance(e, Exception):
                raise e
            kind = e.WhichOneof("event")
            if kind in ("ack", "error") and getattr(e, kind).nonce == nonce:
                return kind, getattr(e, kind)

    def close(self):
        self.requests.put(None)


def grpc_stream(addr, token, user, channel, ssrc):
    stub = gateway_pb2_grpc.GatewayServiceStub(grpc.insecure_channel(addr))
    c = Connection(stub, token)
    hello = c.next("hello")
    ready = c.next("ready")
    report(step="ready", user_id=ready.user_id, heartbeat_interval=hello.heartbeat_interval)

    kind, ack = c.answer(c.send(channel_join=livechat_pb2.ChannelJoin(channel_id=channel, ssrc=ssrc)))
    report(step="joined", kind=kind, members=sorted(m.user_id for m in ack.joined.active_members))

    kind, ack = c.answer(c.send(floor_request=livechat_pb2.ChannelRef(channel_id=channel)))
    report(step="floor", kind=kind, holder=ack.floor.holder.user_id)

    kind, ack = c.answer(c.send(message_create=livechat_pb2.MessageCreate(channel_id=channel, content="hello from python")))
    report(step="sent", kind=kind, message_id=ack.message_sent.message_id)

    # The socket client answers once it has seen our message.
    while True:
        m = c.next("message_event")
        if m.user_id != user:
            report(step="received", user_id=m.user_id, content=m.content)
            break

    kind, err = c.answer(c.send(floor_request=livechat_pb2.ChannelRef(channel_id="no-such-channel")))
    report(step="error", kind=kind, code=livechat_pb2.LivechatErrorCode.Name(err.code), number=err.code)
    c.close()


def grpc_web_frame(message):
    data = message.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


def grpc_web_call(addr, method, message, token):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    conn.request(
        "POST",
        f"/relaymesh.client.v1.GatewayService/{method}",
        body=grpc_web_frame(message),
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "authorization": f"Bearer {token}",
        },
    )
    return conn.getresponse()


def read_frames(resp, parse):
    """Yields decoded messages of a gRPC-Web response until its trailer frame."""
    while True:
        header = resp.read(5)
        if len(header) < 5:
            return
        flags, length = struct.unpack(">BI", header)
        body = resp.read(length)
        if flags & 0x80:
            return
        yield parse(body)


def grpc_web(addr, token):
    resp = grpc_web_call(addr, "Open", gateway_pb2.OpenRequest(protocol=common_pb2.CLIENT_PROTOCOL_LIVECHAT), token)
    report(step="web-open", status=resp.status, content_type=resp.getheader("content-type"))
    events = read_frames(resp, gateway_pb2.OpenResponse.FromString)
    opened = next(events).opened
    first = next(events).livechat.WhichOneof("event")
    second = next(events).livechat.WhichOneof("event")
    report(step="web-opened", session=bool(opened.session_id), first=first, second=second)
    send = gateway_pb2.SendRequest(
        session_id=opened.session_id,
        livechat=livechat_pb2.LivechatRequest(nonce="web1", heartbeat=livechat_pb2.Heartbeat()),
    )
    sent = grpc_web_call(addr, "Send", send, token)
    status = sent.getheader("grpc-status")
    sent.read()
    for e in events:
        if e.livechat.WhichOneof("event") == "heartbeat_ack":
            report(step="web-ack", send_status=status, nonce=e.livechat.heartbeat_ack.nonce)
            return


def main():
    addr, token, user, channel, ssrc = sys.argv[1:6]
    grpc_stream(addr, token, user, channel, int(ssrc))
    grpc_web(addr, token)
    report(step="done")


if __name__ == "__main__":
    main()
