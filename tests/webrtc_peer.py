"""One real WebRTC peer (aiortc) that finds its opponent through relaymesh's
/ws/signal (seed 004), negotiates a data channel and exchanges a message.

Run by tests/integration/signal_webrtc.rs, twice: --role offer (asks for the
match, creates the offer) and --role answer (accepts, answers). ICE
candidates are stripped from the SDP and trickled as send_ice_candidate
frames, so the connection only comes up if the mesh relays them.
Prints each protocol step; exits 0 once a message went each way and both
players got match_started.
"""

import argparse
import asyncio
import json
import sys

import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp


def log(*args):
    print(*args, flush=True)


class Signal:
    def __init__(self, ws, me):
        self.ws = ws
        self.me = me

    async def send(self, kind, payload):
        await self.ws.send(json.dumps({"type": kind, "payload": payload}))

    async def recv(self, *kinds):
        """The next frame of one of `kinds` (lobby snapshots skipped)."""
        while True:
            frame = json.loads(await self.ws.recv())
            if frame["type"] in kinds:
                return frame["type"], frame["payload"]
            if frame["type"] == "error":
                raise RuntimeError(f"error frame: {frame}")
            if frame["type"] != "lobby_update":
                log("ignored", frame["type"])


def split_candidates(sdp):
    """(sdp without candidate lines, [(mid, mline_index, candidate)])."""
    lines, candidates, mid, index = [], [], None, -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        if line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        if line.startswith("a=candidate:"):
            candidates.append((mid, index, line[len("a="):]))
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n", candidates


async def trickle(sig, other, session_id, candidates):
    for mid, index, cand in candidates:
        await sig.send("send_ice_candidate", {
            "senderId": sig.me, "receiverId": other, "sessionId": session_id,
            "candidate": {"candidate": cand, "sdpMid": mid, "sdpMLineIndex": index},
        })
    # An empty candidate marks the end of candidates.
    await sig.send("send_ice_candidate", {
        "senderId": sig.me, "receiverId": other, "sessionId": session_id,
        "candidate": {"candidate": "", "sdpMid": candidates[0][0] if candidates else "0",
                      "sdpMLineIndex": 0},
    })


async def add_remote_candidate(pc, c):
    if not c["candidate"]:
        await pc.addIceCandidate(None)
        return
    cand = candidate_from_sdp(c["candidate"].split(":", 1)[1])
    cand.sdpMid = c.get("sdpMid")
    cand.sdpMLineIndex = c.get("sdpMLineIndex")
    await pc.addIceCandidate(cand)


async def run(args):
    async with websockets.connect(args.url) as ws:
        sig = Signal(ws, args.me)
        await sig.send("join_lobby", {"playerId": args.me, "playerName": args.me.title()})
        await sig.recv("lobby_joined")
        log("lobby_joined")
        pc = RTCPeerConnection()
        got_message = asyncio.Event()
        connected = asyncio.Event()
        channel_open = asyncio.Event()
        channels = []

        def wire_channel(ch):
            channels.append(ch)

            @ch.on("open")
            def _open():
                channel_open.set()

            @ch.on("message")
            def _message(msg):
                log("received:", msg)
                got_message.set()

            if ch.readyState == "open":
                channel_open.set()

        @pc.on("datachannel")
        def _datachannel(ch):
            wire_channel(ch)

        @pc.on("connectionstatechange")
        def _state():
            log("connection:", pc.connectionState)
            if pc.connectionState == "connected":
                connected.set()

        if args.role == "offer":
            # Ask once the opponent is in the lobby.
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "lobby_update" and any(
                        p["playerId"] == args.other for p in frame["payload"]["players"]):
                    break
            await sig.send("request_match", {"requesterId": args.me, "targetId": args.other})
            _, accepted = await sig.recv("match_request_accepted")
            session_id = accepted["sessionId"]
            log("match_request_accepted", session_id)
            wire_channel(pc.createDataChannel("game"))
            await pc.setLocalDescription(await pc.createOffer())
            sdp, candidates = split_candidates(pc.localDescription.sdp)
            await sig.send("send_sdp_offer", {
                "senderId": args.me, "receiverId": args.other, "sdp": sdp, "sessionId": session_id})
            await trickle(sig, args.other, session_id, candidates)
            answered = False
            while not answered:
                kind, p = await sig.recv("sdp_answer_received", "ice_candidate_received")
                if kind == "sdp_answer_received":
                    await pc.setRemoteDescription(RTCSessionDescription(p["sdp"], "answer"))
                    answered = True
                    log("sdp_answer_received")
        else:
            _, request = await sig.recv("match_request_received")
            session_id = request["sessionId"]
            await sig.send("accept_match", {
                "accepterId": args.me, "requesterId": request["requesterId"], "sessionId": session_id})
            await sig.recv("match_request_accepted")
            _, offer = await sig.recv("sdp_offer_received")
            log("sdp_offer_received")
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            sdp, candidates = split_candidates(pc.localDescription.sdp)
            await sig.send("send_sdp_answer", {
                "senderId": args.me, "receiverId": args.other, "sdp": sdp, "sessionId": session_id})
            await trickle(sig, args.other, session_id, candidates)

        async def signals():
            while True:
                kind, p = await sig.recv("ice_candidate_received", "match_started", "match_failed")
                if kind == "ice_candidate_received":
                    await add_remote_candidate(pc, p["candidate"])
                elif kind == "match_started":
                    log("match_started", p["opponentId"])
                    return
                else:
                    raise RuntimeError(f"match_failed: {p}")

        reader = asyncio.create_task(signals())
        await asyncio.wait_for(connected.wait(), 30)
        await sig.send("report_connection", {
            "playerId": args.me, "sessionId": session_id, "connected": True})
        await asyncio.wait_for(channel_open.wait(), 30)
        channels[0].send(f"hello from {args.me}")
        await asyncio.wait_for(got_message.wait(), 30)
        await asyncio.wait_for(reader, 30)
        # Let the last message flush before closing.
        await asyncio.sleep(0.5)
        await pc.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--me", required=True)
    ap.add_argument("--other", required=True)
    ap.add_argument("--role", choices=["offer", "answer"], required=True)
    args = ap.parse_args()
    asyncio.run(asyncio.wait_for(run(args), 60))


if __name__ == "__main__":
    sys.exit(main())
