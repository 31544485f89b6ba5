"""Start a real ComfyUI with this pack symlinked in, and talk to it over HTTP / WebSocket.

Only the standard library is used, so the tests run from the pack's own dev venv while ComfyUI runs
in its own venv (``$COMFYUI_ROOT/.venv``). See scripts/setup_comfyui_host.sh for making that host.
The WebSocket protocol is scripts/comfy_ws.py (scripts/ is put on sys.path here).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))

from comfy_ws import Message, WebSocket  # noqa: E402

PACK_DIR_NAME = "ComfyUI-MakeAVideo"
PACK_MODEL_FOLDER = "makeavideo"
"""Folder name under which the test host's temp models dir is announced (extra_model_paths YAML)."""


class HostUnavailable(RuntimeError):
    """The ComfyUI host cannot be used (not configured, not installed, or it did not start)."""


class PromptRejected(RuntimeError):
    """POST /prompt answered with an error status (validation failed)."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"POST /prompt -> HTTP {status}: {json.dumps(body)[:2000]}")


@dataclass
class HostPaths:
    """Where a ComfyUI host lives and which python runs it."""

    root: Path
    python: Path

    @classmethod
    def from_env(cls) -> "HostPaths":
        """Read COMFYUI_ROOT / COMFYUI_PYTHON; raise HostUnavailable with the reason if unusable."""
        root_text = os.environ.get("COMFYUI_ROOT", "").strip()
        if not root_text:
            raise HostUnavailable(
                "COMFYUI_ROOT is not set (point it at a ComfyUI checkout with a .venv; "
                "scripts/setup_comfyui_host.sh makes one)"
            )
        root = Path(root_text).expanduser().resolve()
        if not (root / "main.py").is_file():
            raise HostUnavailable(f"COMFYUI_ROOT={root} holds no main.py (expected a ComfyUI checkout)")
        python_text = os.environ.get("COMFYUI_PYTHON", "").strip()
        python = Path(python_text).expanduser() if python_text else root / ".venv" / "bin" / "python"
        if not (python.is_file() and os.access(python, os.X_OK)):
            raise HostUnavailable(
                f"no ComfyUI python at {python} (set COMFYUI_PYTHON or create $COMFYUI_ROOT/.venv)"
            )
        return cls(root=root, python=python)

    def version(self) -> str:
        match = re.search(r'__version__\s*=\s*"([^"]+)"', (self.root / "comfyui_version.py").read_text())
        return match.group(1) if match else "unknown"

    def run_report(self, script: str, timeout: float) -> dict:
        """Run `script` in the host's own Python (one thread, in the ComfyUI checkout, as the host imports a
        custom node package) and return the JSON it printed last on a line starting with "REPORT "."""
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        done = subprocess.run([str(self.python), "-c", script], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
        assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-6000:]
        result = json.loads(lines[-1][len("REPORT "):])
        print(json.dumps(result, indent=1))
        return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyServer:
    """A ComfyUI process on 127.0.0.1 with the pack symlinked into a temp custom_nodes folder."""

    host: HostPaths
    work_dir: Path
    pack_dir: Path = REPO_ROOT
    startup_timeout_s: float = field(default_factory=lambda: float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180")))
    """Seconds to wait for /object_info; COMFYUI_STARTUP_TIMEOUT overrides (a loaded machine needs more)."""
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    process: subprocess.Popen | None = None

    # -- layout ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.work_dir / "custom_nodes"

    @property
    def models_dir(self) -> Path:
        """Announced to the host as folder name PACK_MODEL_FOLDER; tests may drop small files here."""
        return self.work_dir / "models" / PACK_MODEL_FOLDER

    @property
    def input_dir(self) -> Path:
        return self.work_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.work_dir / "temp"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "server.log"

    def _write_layout(self) -> Path:
        for folder in (self.custom_nodes_dir, self.models_dir, self.input_dir, self.output_dir,
                       self.temp_dir, self.work_dir / "user"):
            folder.mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / PACK_DIR_NAME
        if not link.is_symlink():
            link.symlink_to(self.pack_dir.resolve(), target_is_directory=True)
        config = self.work_dir / "extra_model_paths.yaml"
        config.write_text(
            "makeavideo_test_host:\n"
            f"  base_path: {json.dumps(str(self.work_dir))}\n"
            "  custom_nodes: custom_nodes\n"
            f"  {PACK_MODEL_FOLDER}: models/{PACK_MODEL_FOLDER}\n"
        )
        return config

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "ComfyServer":
        config = self._write_layout()
        self.port = self.port or free_port()
        command = [
            str(self.host.python), "main.py", "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--extra-model-paths-config", str(config),
            "--output-directory", str(self.output_dir),
            "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.temp_dir),
            "--user-directory", str(self.work_dir / "user"),
            "--database-url", f"sqlite:///{self.work_dir / 'user' / 'comfyui.db'}",
            "--preview-method", "auto",   # sampling previews on (the host's default is none: no previews)
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        log_file = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(
                command, cwd=self.host.root, env=env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log_file.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HostUnavailable(
                    f"ComfyUI exited with code {self.process.returncode} during startup; log tail:\n"
                    + self.log_tail()
                )
            try:
                info = self.object_info()
                if info:
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise HostUnavailable(
            f"ComfyUI did not answer /object_info within {self.startup_timeout_s:.0f} s; log tail:\n"
            + self.log_tail()
        )

    @contextlib.contextmanager
    def running(self, what: str):
        """The server started for the with-block and stopped after it; one that cannot start skips the test,
        saying `what` did not start and why."""
        try:
            self.start()
        except HostUnavailable as reason:
            self.stop()
            pytest.skip(f"{what} did not start: {reason}")
        try:
            yield self
        finally:
            self.stop()

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=grace_s)

    # -- log ------------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pack_import_errors(self, pack_name: str = PACK_DIR_NAME) -> list[str]:
        """Log lines that say the pack failed to import: '(IMPORT FAILED)' lines naming the pack,
        'Cannot import ...<pack>...' lines, and every traceback that mentions the pack's folder, in the log
        up to "Starting server" (later tracebacks are run-time errors of prompts other tests send on purpose)."""
        lines = self.log_text().splitlines()
        started = next((i for i, line in enumerate(lines) if "Starting server" in line), len(lines))
        lines = lines[:started]
        problems = [
            line for line in lines
            if pack_name in line and ("IMPORT FAILED" in line or "Cannot import" in line)
        ]
        for start, line in enumerate(lines):
            if not line.startswith("Traceback"):
                continue
            block = [line]
            for follow in lines[start + 1:]:
                block.append(follow)
                if follow and not follow.startswith((" ", "\t", "Traceback", "During handling",
                                                     "The above exception")):
                    break
            text = "\n".join(block)
            if pack_name in text or str(self.pack_dir.resolve()) in text:
                problems.append(text)
        return problems

    # -- HTTP -----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def object_info(self, node_class: str | None = None) -> dict:
        path = "/object_info" if node_class is None else f"/object_info/{node_class}"
        status, body = self._request("GET", path)
        if status != 200:
            raise ValueError(f"GET {path} -> HTTP {status}")
        return body

    def post_prompt(self, api_json: dict, client_id: str | None = None) -> tuple[int, Any]:
        """POST /prompt with an API-format graph; returns (HTTP status, parsed body) as is."""
        payload: dict[str, Any] = {"prompt": api_json}
        if client_id:
            payload["client_id"] = client_id
        return self._request("POST", "/prompt", payload)

    def queue_prompt(self, api_json: dict, client_id: str | None = None) -> str:
        """Queue a graph and return its prompt_id; raise PromptRejected(status, body) if refused."""
        status, body = self.post_prompt(api_json, client_id)
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise PromptRejected(status, body)
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        status, body = self._request("GET", f"/history/{prompt_id}")
        if status != 200 or not isinstance(body, dict):
            return None
        return body.get(prompt_id)

    def wait_history(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Poll /history until the prompt has finished (success, error or interrupt); return its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") is not None:
                return entry
            if self.process is not None and self.process.poll() is not None:
                raise HostUnavailable("ComfyUI exited while running a prompt; log tail:\n" + self.log_tail())
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s; log tail:\n"
                           + self.log_tail())

    def run_prompt(self, api_json: dict, timeout: float = 120.0) -> dict:
        return self.wait_history(self.queue_prompt(api_json), timeout)

    def interrupt(self, prompt_id: str | None = None) -> int:
        status, _ = self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        return status

    def queue(self) -> dict:
        return self._request("GET", "/queue")[1]

    def wait_idle(self, timeout: float = 300.0) -> None:
        """Return once nothing is running or pending in the queue; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            queue = self.queue()
            if not queue["queue_running"] and not queue["queue_pending"]:
                return
            assert time.monotonic() < deadline, f"queue not empty: {queue}"
            time.sleep(0.2)

    def system_stats(self) -> dict:
        """GET /system_stats (raises ValueError unless it answers 200)."""
        status, body = self._request("GET", "/system_stats")
        if status != 200 or not isinstance(body, dict):
            raise ValueError(f"GET /system_stats -> HTTP {status}")
        return body

    def free(self, unload_models: bool = True, free_memory: bool = True) -> int:
        """POST /free: the host's way to drop loaded models and its node-output cache (done by its prompt
        worker right after the request, asynchronously)."""
        status, _ = self._request("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})
        return status

    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS of /proc/<pid>/status; Linux only)."""
        if self.process is None or self.process.poll() is not None:
            raise HostUnavailable("ComfyUI is not running")
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise OSError(f"no VmRSS in /proc/{self.process.pid}/status")

    def output_files(self, history: dict) -> list[Path]:
        """Existing files named in a history entry's outputs (any key: images, gifs, videos, ...)."""
        folders = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        found: list[Path] = []
        for node_output in history.get("outputs", {}).values():
            for items in node_output.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        folder = folders.get(item.get("type", "output"), self.output_dir)
                        path = folder / item.get("subfolder", "") / item["filename"]
                        if path.is_file():
                            found.append(path)
        return found

    def websocket(self, client_id: str | None = None) -> "EventSocket":
        return EventSocket(self.port, client_id or uuid.uuid4().hex)


def history_status(history: dict) -> str:
    """'success' or 'error' (an interrupt also reads 'error'; see history_events)."""
    return history.get("status", {}).get("status_str", "")


def history_events(history: dict) -> dict[str, dict]:
    """Status messages of a finished prompt by event name: execution_start, execution_error,
    execution_interrupted, execution_success, ..."""
    return {name: data for name, data in history.get("status", {}).get("messages", [])}


class EventSocket:
    """One client id's /ws stream, read on a thread: collects JSON events and binary messages (previews).

    Binary messages are kept as (event_type, payload); ComfyUI's event 1 is PREVIEW_IMAGE whose
    payload starts with a 4-byte image type (1 JPEG, 2 PNG) followed by the encoded image.
    """

    def __init__(self, port: int, client_id: str):
        self.client_id = client_id
        self.events: list[dict] = []
        self.binary: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self._ws = WebSocket(f"ws://127.0.0.1:{port}/ws?clientId={client_id}")
        self._thread = self._ws.listen(self._on_message, name=f"comfy-events-{client_id[:8]}")

    def _on_message(self, message: Message) -> None:
        with self._lock:
            if not message.binary:
                self.events.append(message.json())
            elif len(message.data) >= 4:
                self.binary.append((struct.unpack(">I", message.data[:4])[0], message.data[4:]))

    def events_of(self, event_type: str) -> list[dict]:
        with self._lock:
            return [event["data"] for event in self.events if event.get("type") == event_type]

    def wait_event(self, event_type: str, predicate=lambda data: True, timeout: float = 10.0) -> dict | None:
        """The first `event_type` event whose data satisfies `predicate`, waiting up to `timeout` s for it
        (the read loop is a thread: an event can land just after the HTTP history says the run ended)."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((e for e in self.events_of(event_type) if predicate(e)), None)
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def previews(self) -> list[tuple[str, bytes]]:
        """Preview images received so far as (format, encoded bytes)."""
        with self._lock:
            return [({1: "JPEG", 2: "PNG"}.get(struct.unpack(">I", payload[:4])[0], "?"), payload[4:])
                    for event, payload in self.binary if event == 1 and len(payload) >= 4]

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "EventSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
