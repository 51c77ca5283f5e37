"""A copilot client (seed 001) built from relaymesh's protos alone.

The test suite generates Python stubs from proto/ with grpcio-tools, then
runs this script against a live mesh (tests/integration/python_client.rs).
Over the gateway's gRPC client API it asks a query, answers every callback
the query service sends, gets the response, and has a stale answer refused
with the proto enum value; one JSON line per observation.

Usage: copilot_client.py HOST:PORT TOKEN
"""

import json
import queue
import sys
import threading

import grpc
from google.protobuf import json_format, struct_pb2

from relaymesh.client.v1 import copilot_pb2, gateway_pb2_grpc

TIMEOUT = 10

# What this client answers to each callback, and the request that carries it.
ANSWERS = {
    "request_available_data": ("available_data", ["costs-2024"]),
    "request_api": ("api_result", {"rows": 3}),
    "clarification_request": ("human_response", "the monthly cost"),
}


def report(**fields):
    print(json.dumps(fields), flush=True)


def value(data):
    return json_format.ParseDict(data, struct_pb2.Value())


def main():
    addr, token = sys.argv[1:3]
    stub = gateway_pb2_grpc.GatewayServiceStub(grpc.insecure_channel(addr))
    requests, events = queue.Queue(), queue.Queue()
    responses = stub.Copilot(iter(requests.get, None), metadata=[("authorization", f"Bearer {token}")])

    def read():
        try:
            for r in responses:
                events.put(r)
        except grpc.RpcError as e:
            events.put(e)

    threading.Thread(target=read, daemon=True).start()

    def next_event():
        """The next event other than the server's heartbeat ping (answered)."""
        while True:
            e = events.get(timeout=TIMEOUT)
            if isinstance(e, Exception):
                raise e
            kind = e.WhichOneof("event")
            if kind == "ping":
                requests.put(copilot_pb2.CopilotRequest(pong=copilot_pb2.CopilotPong()))
                continue
            return kind, getattr(e, kind)

    kind, connected = next_event()
    report(step="connected", kind=kind, user_id=connected.user_id)

    query = copilot_pb2.CopilotQuery(request_id="py-q1", data=value({"text": "monthly cost"}))
    requests.put(copilot_pb2.CopilotRequest(query=query))
    callbacks, last = [], None
    while True:
        kind, event = next_event()
        if kind not in ANSWERS:
            break
        callbacks.append(kind)
        answer_kind, data = ANSWERS[kind]
        last = (answer_kind, copilot_pb2.CopilotCallbackAnswer(request_id=event.request_id, data=value(data)))
        requests.put(copilot_pb2.CopilotRequest(**{answer_kind: last[1]}))
    data = json_format.MessageToDict(event.data) if kind == "response" else None
    report(step="response", kind=kind, request_id=event.request_id, callbacks=callbacks,
           data=data, remaining=event.remaining if kind == "response" else None)

    # The last callback's id again: used once already, so refused.
    requests.put(copilot_pb2.CopilotRequest(**{last[0]: last[1]}))
    kind, err = next_event()
    report(step="error", kind=kind, code=copilot_pb2.CopilotErrorCode.Name(err.code),
           request_id=err.request_id)
    requests.put(None)
    report(step="done")


if __name__ == "__main__":
    main()
