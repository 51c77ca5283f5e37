#!/usr/bin/env python3
"""Generates node_hmac.json and node_key.json: what Python itself does with
node frames (seed 000), so the Rust signer can be checked byte for byte.

Run from anywhere with python3 (no third-party packages); the outputs are
committed next to this script and read by crates/node-signature/tests/node_hmac.rs.

    python3 crates/node-signature/tests/vectors/gen_node_hmac.py
"""

import base64
import hashlib
import hmac
import json
import math
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def seed_key(secret_key):
    # Verbatim from seed 000.
    try:
        key_bytes = base64.b64decode(secret_key)
    except:  # noqa: E722 - the seed catches everything, and so must we
        key_bytes = secret_key.encode('utf-8')
    return key_bytes


def seed_sign(message, secret_key):
    # Verbatim from seed 000.
    message_without_sig = {k: v for k, v in message.items() if k != 'signature'}
    payload_str = json.dumps(message_without_sig, sort_keys=True, separators=(',', ':'))
    key_bytes = seed_key(secret_key)
    signature = hmac.new(key_bytes, payload_str.encode(), hashlib.sha256).hexdigest()
    return payload_str, signature


def all_finite(v):
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, dict):
        return all(all_finite(x) for x in v.values())
    if isinstance(v, list):
        return all(all_finite(x) for x in v)
    return True


SECRETS = [
    "c2VjcmV0LWtleS1mb3Itbm9kZXM=",  # valid base64
    "my-secret",                      # '-' discarded, rest decodes
    "abc",                            # incorrect padding: UTF-8 fallback
    "노드비밀",                        # not ASCII: UTF-8 fallback
    "",                               # empty key
    "dGVzdA==junk",                   # data after padding is ignored
    "plain secret with spaces!",      # 1 more than a multiple of 4: fallback
]

HEAD = '"version":"1.0","timestamp":"2025-01-07T14:30:00.000Z","message_id":"550e8400-e29b-41d4-a716-446655440000","type":"HELLO","node_id":"node_runner_001"'


def frame(payload, extra=''):
    return '{' + HEAD + extra + ',"payload":' + payload + '}'


FRAMES = [
    ("seed frame", frame('{"devices":[]}', ',"signature":"a1b2c3d4e5f6"')),
    ("korean value", frame('{"name":"노드 러너","status":"준비"}')),
    ("korean keys", frame('{"노드":1,"장치":[1,2],"a":"b"}')),
    ("accented raw and escaped", frame('{"café":"crème brûlée","escaped":"caf\\u00e9","upper":"\\u00C9"}')),
    ("emoji raw", frame('{"😀":"grin 😀","mixed":"a😀b"}')),
    ("emoji escaped pair", frame('{"\\ud83d\\ude00":"\\ud83d\\ude00","x":"\\uD83D\\uDE00"}')),
    ("key order astral vs bmp", frame('{"\\ufb00":1,"😀":2,"\\ue000":3,"z":4,"Z":5,"é":6,"":7,"a":8,"aa":9,"a\\u0000":10}')),
    ("lone surrogates", frame('{"hi":"\\ud800","lo":"\\udc00x","rev":"\\udc00\\ud800"}')),
    ("control characters", frame('{"c":"\\n\\r\\t\\b\\f\\u0000\\u0001\\u001f\\u007f\\u0080 end"}')),
    ("quotes and backslashes", frame('{"q":"say \\"hi\\"","b":"C:\\\\path\\\\to","s":"a\\/b/c"}')),
    ("floats simple", frame('{"a":0.1,"b":1.0,"c":-0.0,"d":3.141592653589793,"e":0.30000000000000004}')),
    ("floats large", frame('{"a":1e16,"b":1e15,"c":1e300,"d":1.5e300,"e":1.7976931348623157e308,"f":123456789012345680.0}')),
    ("floats small", frame('{"a":1e-7,"b":0.0001,"c":0.00001,"d":5e-324,"e":2.2250738585072014e-308,"f":4.9e-324}')),
    ("float spellings", frame('{"a":1E2,"b":1e+2,"c":1.0e0,"d":0.5e-3,"e":-1.25E-10,"f":100.000,"g":12345678.9}')),
    ("float rounding", frame('{"a":9007199254740993.0,"b":0.1000000000000000055511151231257827,"c":1.00000000000000011102230246251565404236316680908203125}')),
    ("float overflow and underflow", frame('{"big":1e400,"neg":-1e400,"tiny":1e-400,"ntiny":-1e-400}')),
    ("big integers", frame('{"a":18446744073709551616,"b":-1180591620717411303424,"c":1000000000000000000000000000000,"d":-0,"e":9007199254740993}')),
    ("ints and literals", frame('{"i":0,"n":-42,"t":true,"f":false,"z":null,"max":9223372036854775807,"min":-9223372036854775808}')),
    ("nesting", frame('{"a":[{"b":{"d":[1,{"f":2,"e":3}],"c":null}},[[]],{}],"z":{"y":{"x":{"w":"deep"}}}}')),
    ("empty containers", frame('{"o":{},"a":[],"s":""}')),
    ("empty payload", frame('{}')),
    ("no payload", '{' + HEAD + '}'),
    ("minimal object", '{}'),
    ("whitespace in input", '{\n  "type" : "HEARTBEAT" ,\r\n\t"node_id":"n1",\n  "payload" : { "status" : "READY" , "list" : [ 1 , 2 ] }\n}'),
    ("duplicate keys keep last", frame('{"k":1,"k":2,"k":{"x":1},"j":"a","j":"b"}', ',"type":"RESULT"')),
    ("duplicate signature", frame('{"k":1}', ',"signature":"first","signature":"second"')),
    ("signature first", '{"signature":"deadbeef","type":"ACK","node_id":"n","payload":{"ok":true}}'),
    ("non-string signature", frame('{"k":1}', ',"signature":null')),
    ("nested signature kept", frame('{"signature":"inner","data":{"signature":1}}')),
    ("deep nesting", frame('[' * 40 + '"bottom"' + ']' * 40)),
    ("long string", frame('{"text":"' + ('lorem ipsum 노드 😀 ' * 50) + '"}')),
    ("command frame", '{"version":"1.0","timestamp":"2025-01-07T14:31:02.517Z","message_id":"6f1c2b2e-0b7e-4d3c-9a57-1f0a0c3e9b11","type":"COMMAND","node_id":"hub","payload":{"command":"WATCH_VIDEO","device_serials":["R58M41ABCDE","R58M41FGHIJ"],"params":{"video_id":"dQw4w9WgXcQ","duration_sec":180,"ratio":0.75,"title":"🎵 노래 — «live»"}}}'),
    ("result frame", '{"version":"1.0","timestamp":"2025-01-07T14:35:00.000Z","message_id":"7a2e","type":"RESULT","node_id":"node_runner_002","payload":{"command_id":"c-1","success":false,"error":"tab\\tnew\\nline \\"quoted\\"","metrics":{"cpu":12.5,"mem_mb":1024,"uptime":86400.0}}}'),
    ("unicode escapes everywhere", '{"\\u0074ype":"\\u0048ELLO","node_id":"\\u006e\\u006f\\u0064\\u0065","payload":{"\\u00e9\\u00e8":"\\u4e2d\\u6587","\\u00ff":"\\u0100"}}'),
    ("del and c1 characters raw", frame('{"del":"\x7f","c1":"\u0085\u00a0","bom":"\ufeff","ls":"\u2028\u2029"}')),
    ("non-ascii secret", frame('{"k":"v"}')),
    ("number edge cases", frame('[0,-0,0.0,-0.0,1,-1,10,1e0,1e1,1e-1,123e-2,5e-1,1e22,1e21,1e-4,1e-5,99999999999999990000.0]')),
    ("repr boundary", frame('{"a":9999999999999998.0,"b":1e16,"c":0.001,"d":0.0001,"e":0.000099999,"f":1234567890123456.7}')),
    ("array payload", frame('["a",1,2.5,null,true,{"k":[]}]')),
    ("scalar payload", frame('"just a string"')),
]


def random_doubles(n):
    # Random bit patterns cover every exponent; %.17g is not the shortest
    # spelling, so the reader's rounding and repr's digit choice both count.
    rng = random.Random(11)
    out = []
    while len(out) < n:
        (f,) = struct.unpack('<d', rng.getrandbits(64).to_bytes(8, 'little'))
        if not math.isfinite(f):
            continue
        s = '%.17g' % f
        if not any(c in s for c in '.en'):
            s += '.0'
        out.append(s)
    for _ in range(n // 2):
        # Short decimals, where shortest-digit ties are likeliest.
        out.append('%d.%de%d' % (rng.randint(0, 999), rng.randint(0, 999), rng.randint(-30, 30)))
    return '[' + ','.join(out) + ']'


FRAMES.append(("random doubles", frame(random_doubles(400))))


def main():
    cases = []
    for i, (name, text) in enumerate(FRAMES):
        message = json.loads(text)
        assert isinstance(message, dict), name
        secret = SECRETS[i % len(SECRETS)]
        if name == "non-ascii secret":
            secret = "비밀키 🔑"
        payload_str, signature = seed_sign(message, secret)
        signed = dict(message)
        signed['signature'] = signature
        # What a Python node would send; absent when Python would emit the
        # non-JSON tokens Infinity/-Infinity.
        python_signed = json.dumps(signed) if all_finite(signed) else None
        cases.append({
            "name": name,
            "frame": text,
            "secret": secret,
            "key_hex": seed_key(secret).hex(),
            "canonical": payload_str,
            "signature": signature,
            "python_signed_frame": python_signed,
        })
    with open(os.path.join(HERE, "node_hmac.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "gen_node_hmac.py", "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # Key handling: b64decode's lenient mode on many shapes of secret.
    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ .!\n\t:"
    secrets = [
        "", "=", "==", "a", "ab", "abc", "abcd", "ab==", "ab=", "abc=", "abc=d", "ab=cd", "a=b=cd",
        "====ab==", "c2VjcmV0", "c2Vj cmV0", "c2VjcmV0\n", "my-secret", "dGVzdA==junk", "dGVzdA",
        "dGVzdA=", "dGVzdA===", "Zm9v_YmFy", "é", "노드", "secret😀", "abc\x00", "A" * 64, "ab==cd==",
        "YQ", "YQ=", "YQ==", "YWI", "YWI=", "YWI==", "=YWI=", "Y=Q=",
    ]
    for _ in range(400):
        n = rng.randint(0, 14)
        secrets.append("".join(rng.choice(alphabet) for _ in range(n)))
    keys = []
    seen = set()
    for s in secrets:
        if s in seen:
            continue
        seen.add(s)
        try:
            base64.b64decode(s)
            fallback = False
        except:  # noqa: E722
            fallback = True
        keys.append({"secret": s, "key_hex": seed_key(s).hex(), "utf8_fallback": fallback})
    with open(os.path.join(HERE, "node_key.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "gen_node_hmac.py", "cases": keys}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
