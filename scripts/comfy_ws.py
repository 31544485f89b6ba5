"""A small WebSocket client (RFC 6455) on the standard library, for ComfyUI's /ws and Chromium's DevTools.

    ws = WebSocket("ws://127.0.0.1:8188/ws?clientId=abc")
    message = ws.receive()            # Message: .data is str for text, bytes for binary; .json()
    ws.send_text('{"id": 1}')
    thread = ws.listen(on_message)    # or read on a daemon thread until the socket closes
    ws.close()

Opening: the HTTP/1.1 upgrade, checked against Sec-WebSocket-Accept (ws:// and wss://; http(s):// URLs are
taken as their ws(s):// twins). Reading: frames with 7-bit, 16-bit and 64-bit lengths, masked or not, and
messages fragmented over continuation frames (pings between fragments are answered with pongs). Sending:
masked frames, as a client must. Closing: a close frame with status 1000, then the socket is shut down,
which also ends a receive() blocked on another thread. A close frame from the server ends receive() with
WebSocketClosed; protocol errors raise WebSocketError. Both are ConnectionError (so OSError).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
import urllib.parse
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class WebSocketError(ConnectionError):
    """The handshake was refused or the peer broke the protocol."""


class WebSocketClosed(WebSocketError):
    """The connection is closed: a close frame arrived (code, reason) or the socket ended (code None)."""

    def __init__(self, code: int | None = None, reason: str = ""):
        self.code, self.reason = code, reason
        super().__init__(f"websocket closed (code {code}{': ' + reason if reason else ''})"
                         if code is not None else "websocket closed")


@dataclass
class Message:
    """One whole message: `data` is str for a text message, bytes for a binary one."""

    data: str | bytes

    @property
    def binary(self) -> bool:
        return isinstance(self.data, bytes)

    def json(self):
        return json.loads(self.data)


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to Sec-WebSocket-Key `key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def mask(payload: bytes, key: bytes) -> bytes:
    """`payload` XOR the repeated 4-byte `key` (masking and unmasking are the same)."""
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, fin: bool = True, key: bytes | None = None) -> bytes:
    """One frame; masked with `key` (4 bytes) when given, as every client-to-server frame must be."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if key is not None else 0
    if len(payload) < 126:
        head.append(bit | len(payload))
    elif len(payload) < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", len(payload))
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", len(payload))
    if key is None:
        return bytes(head) + payload
    return bytes(head) + key + mask(payload, key)


class WebSocket:
    """A client connection; `timeout` bounds connecting and the handshake, `read_timeout` every read after
    it (None: block until a message or the close)."""

    def __init__(self, url: str, timeout: float = 10.0, read_timeout: float | None = None):
        parsed = urllib.parse.urlparse(url)
        secure = parsed.scheme in ("wss", "https")
        if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.hostname:
            raise ValueError(f"not a websocket URL: {url!r}")
        port = parsed.port or (443 if secure else 80)
        self._buffer = bytearray()
        self._send_lock = threading.Lock()
        self._closed = False
        sock = socket.create_connection((parsed.hostname, port), timeout=timeout)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parsed.hostname)
        self._sock = sock
        try:
            self._handshake(parsed, port)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(read_timeout)

    def _handshake(self, parsed: urllib.parse.ParseResult, port: int) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        self._sock.sendall((f"GET {target} HTTP/1.1\r\nHost: {parsed.hostname}:{port}\r\n"
                            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > 65536:
                raise WebSocketError("websocket handshake: answer headers too long")
            chunk = self._sock.recv(4096)
            if not chunk:
                raise WebSocketError("websocket handshake closed by the server")
            self._buffer += chunk
        end = self._buffer.index(b"\r\n\r\n")
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[:end + 4]       # anything after the headers is already frame data
        status, *lines = head.split("\r\n")
        if status.split(" ")[1:2] != ["101"]:
            raise WebSocketError(f"websocket refused: {head[:200]!r}")
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines)}
        if headers.get("sec-websocket-accept") != accept_key(key):
            raise WebSocketError("websocket handshake: wrong Sec-WebSocket-Accept")

    # -- reading --------------------------------------------------------------------------------------
    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            if not chunk:
                raise WebSocketClosed()
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_frame(self) -> tuple[bool, int, bytes]:
        """The next frame as (fin, opcode, unmasked payload)."""
        first, second = self._read_exact(2)
        if first & 0x70:
            raise WebSocketError(f"websocket frame with reserved bits set (0x{first:02x})")
        length = second & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._read_exact(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._read_exact(8))[0]
        if length > MAX_MESSAGE_BYTES:
            raise WebSocketError(f"websocket frame of {length} bytes (at most {MAX_MESSAGE_BYTES})")
        key = self._read_exact(4) if second & 0x80 else None
        payload = self._read_exact(length)
        return bool(first & 0x80), first & 0x0F, mask(payload, key) if key else payload

    def receive(self) -> Message:
        """The next whole text or binary message; answers pings; raises WebSocketClosed on a close."""
        opcode, parts, size = None, [], 0
        while True:
            fin, op, payload = self.read_frame()
            if op == PING:
                self._send_frame(PONG, payload)
                continue
            if op == PONG:
                continue
            if op == CLOSE:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                self.close()
                raise WebSocketClosed(code, payload[2:].decode(errors="replace"))
            if op == CONTINUATION and opcode is None:
                raise WebSocketError("websocket continuation frame without a message to continue")
            if op in (TEXT, BINARY):
                if opcode is not None:
                    raise WebSocketError("websocket message started inside a fragmented message")
                opcode = op
            elif op != CONTINUATION:
                raise WebSocketError(f"websocket frame with unknown opcode 0x{op:x}")
            parts.append(payload)
            size += len(payload)
            if size > MAX_MESSAGE_BYTES:
                raise WebSocketError(f"websocket message over {MAX_MESSAGE_BYTES} bytes")
            if fin:
                data = b"".join(parts)
                return Message(data.decode() if opcode == TEXT else data)

    def listen(self, on_message, name: str = "websocket-reader") -> threading.Thread:
        """Call on_message(Message) for every message on a daemon thread, until the connection closes or
        fails (an OSError or ValueError, on_message's included, ends the thread quietly)."""
        def loop():
            try:
                while True:
                    on_message(self.receive())
            except (OSError, ValueError):
                return

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        return thread

    # -- writing --------------------------------------------------------------------------------------
    def _send_frame(self, opcode: int, payload: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(encode_frame(opcode, payload, key=os.urandom(4)))

    def send_text(self, text: str) -> None:
        self._send_frame(TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        self._send_frame(BINARY, bytes(data))

    def close(self, code: int = 1000) -> None:
        """Send a close frame (once), then shut the socket down; never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            self._send_frame(CLOSE, struct.pack(">H", code))
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> "WebSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
