"""scripts/comfy_ws.py, the one WebSocket client of the API client and the host tests, against a local
socket server that speaks the protocol frame by frame: fragments with a ping between them, 16- and 64-bit
lengths, a masked server frame, binary messages, data arriving byte by byte, close codes, refused
handshakes, protocol errors, a dropped connection and close() from another thread."""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import comfy_ws as W  # noqa: E402


def serve(script, accept_ok=True, status=101):
    """A one-connection server on a free port: answers the handshake, then runs script(conn, answer, got)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = {}

    def run():
        c, _ = srv.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(4096)
        head = buf.split(b"\r\n\r\n")[0].decode()
        got["request"] = head
        key = [ln.split(":", 1)[1].strip() for ln in head.split("\r\n") if ln.lower().startswith("sec-websocket-key")][0]
        answer = (f"HTTP/1.1 {status} Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {W.accept_key(key) if accept_ok else 'bogus'}\r\n\r\n").encode()
        script(c, answer, got)

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], got


def read_client_frame(c):
    ws = W.WebSocket.__new__(W.WebSocket)
    ws._buffer, ws._sock = bytearray(), c
    return ws.read_frame()


def test_messages_fragments_lengths_masking_and_close():
    big, mid = os.urandom(70000), "x" * 300

    def script(c, answer, got):
        msg = json.dumps({"type": "progress", "data": {"value": 1}}).encode()
        c.sendall(answer + W.encode_frame(W.TEXT, msg[:5], fin=False))   # first frame glued to the handshake
        c.sendall(W.encode_frame(W.PING, b"hi"))
        c.sendall(W.encode_frame(W.CONTINUATION, msg[5:10], fin=False))
        c.sendall(W.encode_frame(W.CONTINUATION, msg[10:], fin=True))
        got["pong"] = read_client_frame(c)
        c.sendall(W.encode_frame(W.TEXT, mid.encode()))                  # 16-bit length
        c.sendall(W.encode_frame(W.BINARY, big, key=b"abcd"))            # 64-bit length, masked
        for b in W.encode_frame(W.BINARY, struct.pack(">I", 1) + b"\x89PNG"):
            c.send(bytes([b]))                                           # byte by byte
        got["echo"] = read_client_frame(c)
        c.sendall(W.encode_frame(W.CLOSE, struct.pack(">H", 1001) + b"bye"))
        got["close_reply"] = read_client_frame(c)
        c.close()

    port, got = serve(script)
    ws = W.WebSocket(f"http://127.0.0.1:{port}/ws?clientId=abc")
    m = ws.receive()
    assert not m.binary and m.json()["data"]["value"] == 1
    assert ws.receive().data == mid
    m = ws.receive()
    assert m.binary and m.data == big
    assert ws.receive().data == struct.pack(">I", 1) + b"\x89PNG"
    ws.send_text("é" * 200)
    with pytest.raises(W.WebSocketClosed) as closed:
        ws.receive()
    assert closed.value.code == 1001 and closed.value.reason == "bye"
    assert isinstance(closed.value, ConnectionError)
    time.sleep(0.2)
    assert got["request"].startswith("GET /ws?clientId=abc HTTP/1.1")
    assert got["pong"] == (True, W.PONG, b"hi")
    assert got["echo"] == (True, W.TEXT, ("é" * 200).encode())
    assert got["close_reply"][1] == W.CLOSE and got["close_reply"][2][:2] == struct.pack(">H", 1000)
    ws.close()
    ws.close()


def test_close_from_another_thread_ends_the_listener():
    def script(c, answer, got):
        c.sendall(answer + W.encode_frame(W.TEXT, b'{"a": 1}'))
        got["closed"] = read_client_frame(c)
        time.sleep(5)
        c.close()

    port, _ = serve(script)
    ws = W.WebSocket(f"ws://127.0.0.1:{port}/ws")
    seen = []
    listener = ws.listen(lambda m: seen.append(m.json()))
    time.sleep(0.3)
    t0 = time.monotonic()
    ws.close()
    listener.join(2)
    assert not listener.is_alive() and seen == [{"a": 1}] and time.monotonic() - t0 < 1


@pytest.mark.parametrize("kw,match", [({"status": 403}, "refused"), ({"accept_ok": False}, "Accept")])
def test_refused_handshakes(kw, match):
    port, _ = serve(lambda c, r, g: (c.sendall(r), time.sleep(1)), **kw)
    with pytest.raises(W.WebSocketError, match=match):
        W.WebSocket(f"ws://127.0.0.1:{port}/ws")


def test_no_server_protocol_errors_and_a_dropped_connection():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    free = srv.getsockname()[1]
    srv.close()
    with pytest.raises(OSError):
        W.WebSocket(f"ws://127.0.0.1:{free}/ws")
    for frame in (W.encode_frame(W.CONTINUATION, b"x"), W.encode_frame(0x3, b"x")):   # no start; unknown opcode
        port, _ = serve(lambda c, r, g, f=frame: (c.sendall(r + f), time.sleep(1)))
        ws = W.WebSocket(f"ws://127.0.0.1:{port}/ws")
        with pytest.raises(W.WebSocketError) as err:
            ws.receive()
        assert not isinstance(err.value, W.WebSocketClosed)
        ws.close()
    port, _ = serve(lambda c, r, g: (c.sendall(r), c.close()))
    ws = W.WebSocket(f"ws://127.0.0.1:{port}/ws")
    with pytest.raises(W.WebSocketClosed) as closed:
        ws.receive()
    assert closed.value.code is None


def test_masking_is_its_own_inverse():
    for n in range(13):
        data = os.urandom(n)
        assert W.mask(W.mask(data, b"wxyz"), b"wxyz") == data
