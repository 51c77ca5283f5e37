#!/usr/bin/env python3
"""Writes the client protocol reference (docs/client-protocol-reference.md)
from the protos themselves: every message, field, enum value and RPC of
relaymesh.client.v1 with its comment.

    buf build -o /tmp/relaymesh.binpb && python3 tools/proto_reference.py /tmp/relaymesh.binpb > docs/client-protocol-reference.md

Needs Python's protobuf package (it comes with grpcio-tools).
"""

import sys

from google.protobuf import descriptor_pb2

PACKAGE = "relaymesh.client.v1"

TYPES = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string",
    12: "bytes", 13: "uint32", 17: "sint32", 18: "sint64",
}


def comments(fd):
    """Leading comments by source path."""
    out = {}
    for loc in fd.source_code_info.location:
        text = (loc.leading_comments or "").strip()
        if text:
            out[tuple(loc.path)] = " ".join(line.strip() for line in text.splitlines())
    return out


def type_name(field):
    if field.type_name:
        name = field.type_name.lstrip(".")
        return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else name
    return TYPES.get(field.type, str(field.type))


def main(path):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        fds.ParseFromString(f.read())
    print("# Client protocol reference (`relaymesh.client.v1`)\n")
    print("Generated from `proto/relaymesh/client/v1/` by `tools/proto_reference.py`; do not edit.")
    print("How to use it: [client-api.md](client-api.md).\n")
    for fd in sorted(fds.file, key=lambda f: f.name):
        if fd.package != PACKAGE:
            continue
        c = comments(fd)
        print(f"## `{fd.name}`\n")
        for si, svc in enumerate(fd.service):
            print(f"### service `{svc.name}`\n")
            print(c.get((6, si), "") + "\n")
            print("| rpc | request | response | |\n|---|---|---|---|")
            for mi, m in enumerate(svc.method):
                req = ("stream " if m.client_streaming else "") + m.input_type.split(".")[-1]
                resp = ("stream " if m.server_streaming else "") + m.output_type.split(".")[-1]
                print(f"| `{m.name}` | `{req}` | `{resp}` | {c.get((6, si, 2, mi), '')} |")
            print()
        for mi, msg in enumerate(fd.message_type):
            print(f"### message `{msg.name}`\n")
            print(c.get((4, mi), "") + "\n")
            if msg.field:
                print("| field | type | |\n|---|---|---|")
                for fi, field in enumerate(msg.field):
                    label = "repeated " if field.label == 3 else ("optional " if field.proto3_optional else "")
                    oneof = ""
                    if field.HasField("oneof_index") and not field.proto3_optional:
                        oneof = f" (oneof `{msg.oneof_decl[field.oneof_index].name}`)"
                    print(f"| `{field.name}` = {field.number} | `{label}{type_name(field)}`{oneof} | {c.get((4, mi, 2, fi), '')} |")
                print()
        for ei, enum in enumerate(fd.enum_type):
            print(f"### enum `{enum.name}`\n")
            print(c.get((5, ei), "") + "\n")
            print("| value | number | |\n|---|---|---|")
            for vi, v in enumerate(enum.value):
                print(f"| `{v.name}` | {v.number} | {c.get((5, ei, 2, vi), '')} |")
            print()


if __name__ == "__main__":
    main(sys.argv[1])
