"""Queue a ComfyUI API-format workflow, follow its progress and download its outputs.

    python scripts/comfy_client.py workflows/text_to_video_api.json --server 127.0.0.1:8188 \
        --set prompt="a red circle on a black background" --seed 3 --frames 16 -o outdir

Overrides find nodes by class or title: `prompt` / `negative` set the text of MakeAVideo Text Encode
nodes (a title containing "negative" marks the negative one), `--seed` sets the seed of every node
with one, `--frames` the frames of every Sampler; `--set NODE.input=value` sets any input of the nodes
whose id, class_type or title is NODE. Progress comes over the server's /ws WebSocket (comfy_ws.py,
beside this file); completion is read from /history, outputs are fetched via /view. Exit codes: 0 with
the downloaded paths on stdout, 2 with "error: ..." on stderr (refused or failed workflow, bad override,
unreachable server). A UI-format workflow (File > Save) is converted with the server's /object_info
(ui_to_api.py); `--set NODE.input` must name an input the node's class declares there. Standard library only; never imports ComfyUI or the pack.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from comfy_ws import WebSocket
from ui_to_api import input_definitions, ui_to_api

TEXT_ENCODE = "MakeAVideoTextEncode"
SAMPLER = "MakeAVideoSampler"


class ClientError(RuntimeError):
    """The server refused or failed the workflow; the message carries its answer."""


def parse_value(text: str):
    """JSON if it parses (numbers, booleans, lists), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _title(node: dict) -> str:
    return (node.get("_meta") or {}).get("title", "")


def select_nodes(workflow: dict, selector: str) -> list[str]:
    """Ids of nodes whose id, class_type or title equals `selector`."""
    return [nid for nid, node in workflow.items()
            if selector in (nid, node.get("class_type"), _title(node))]


def _is_negative(node: dict) -> bool:
    return "negative" in _title(node).lower()


def is_ui_workflow(workflow) -> bool:
    """A UI-format workflow (the editor's File > Save: a "nodes" list and "links"), not the API format."""
    return isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list) and "links" in workflow


def api_workflow(workflow, source: str, object_info: dict | None) -> dict:
    """`workflow` in API format: UI files converted with /object_info (refused when the server cannot be
    asked); the API form checked to be {id: {"class_type": str, "inputs": dict}} (missing inputs: {})."""
    if is_ui_workflow(workflow):
        if object_info is None:
            raise ValueError(f"{source}: a UI-format workflow; converting it needs the server's /object_info, which "
                             "could not be read (start the server, or export the API form: File > Export (API))")
        try:
            workflow = ui_to_api(workflow, object_info)
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"{source}: malformed UI-format workflow ({type(e).__name__}: {e})") from None
        except ValueError as e:
            raise ValueError(f"{source}: cannot convert the UI-format workflow: {e}") from None
    if not isinstance(workflow, dict) or not workflow:
        raise ValueError(f"{source}: expected an API-format workflow {{node id: {{class_type, inputs}}}}, "
                         f"got {'an empty one' if workflow == {} else type(workflow).__name__}")
    out = {}
    for nid, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise ValueError(f"{source}: node {nid!r} is not an API-format node (a dict with a class_type)")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise ValueError(f"{source}: node {nid!r} ({node['class_type']}): inputs must be a dict, "
                             f"got {type(inputs).__name__}")
        out[nid] = {**node, "inputs": inputs}
    return out


def declared_inputs(object_info: dict | None, class_type: str) -> set[str] | None:
    """Input names class_type declares in /object_info; None when unknown (no server answer)."""
    if object_info is None:
        return None
    info = object_info.get(class_type)
    if not isinstance(info, dict):
        return set()
    try:
        names = {name for name, *_ in input_definitions(info)}
    except (KeyError, TypeError, IndexError, AttributeError):
        return None
    return names | set((info.get("input") or {}).get("hidden") or {})


def _check_input(object_info: dict | None, node: dict, nid: str, key: str, input_name: str) -> None:
    names = declared_inputs(object_info, node["class_type"])
    if names is None or input_name in names:
        return
    if not names:
        raise ValueError(f"--set {key}: node {nid} is a {node['class_type']}, which the server does not know "
                         "(is its node pack installed?)")
    raise ValueError(f"--set {key}: {node['class_type']} (node {nid}) has no input {input_name!r}; "
                     f"its inputs: {', '.join(sorted(names))}")


def apply_overrides(workflow: dict, sets: list[str] = (), seed: int | None = None,
                    frames: int | None = None, object_info: dict | None = None) -> dict:
    """A copy of `workflow` with the overrides applied; unknown targets, and inputs a node's class does not
    declare in `object_info` (the server's /object_info; None: not checked), raise ValueError."""
    wf = json.loads(json.dumps(api_workflow(workflow, "workflow", None)))
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = parse_value(raw) if "." in key else raw
        if key in ("prompt", "negative"):
            targets = [nid for nid, n in wf.items() if n.get("class_type") == TEXT_ENCODE
                       and _is_negative(n) == (key == "negative")]
            if not targets:
                raise ValueError(f"--set {key}: the workflow has no {'negative' if key == 'negative' else 'positive'} "
                                 f"{TEXT_ENCODE} node (title the negative one 'Negative ...')")
            for nid in targets:
                wf[nid]["inputs"]["text"] = value
            continue
        if "." not in key:
            raise ValueError(f"--set {key}: use prompt=, negative= or NODE.input= (NODE: id, class_type or title)")
        selector, input_name = key.rsplit(".", 1)
        targets = select_nodes(wf, selector)
        if not targets:
            raise ValueError(f"--set {key}: no node with id, class_type or title {selector!r}")
        for nid in targets:
            _check_input(object_info, wf[nid], nid, key, input_name)
        for nid in targets:
            wf[nid]["inputs"][input_name] = value
    if seed is not None:
        found = [nid for nid, n in wf.items() if "seed" in n.get("inputs", {}) and not isinstance(n["inputs"]["seed"], list)]
        if not found:
            raise ValueError("--seed: the workflow has no node with a seed input")
        for nid in found:
            wf[nid]["inputs"]["seed"] = seed
    if frames is not None:
        found = [nid for nid, n in wf.items() if n.get("class_type") == SAMPLER]
        if not found:
            raise ValueError(f"--frames: the workflow has no {SAMPLER} node")
        for nid in found:
            wf[nid]["inputs"]["frames"] = frames
    return wf


class Client:
    def __init__(self, server: str = "127.0.0.1:8188", client_id: str | None = None, timeout: float = 30.0):
        self.server = server if "://" in server else f"http://{server}"
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout

    def _request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def object_info(self) -> dict | None:
        """The server's node definitions (/object_info), or None when it cannot be read."""
        try:
            status, raw = self._request("GET", "/object_info")
            info = json.loads(raw) if status == 200 else None
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def queue(self, workflow: dict) -> str:
        status, raw = self._request("POST", "/prompt", {"prompt": workflow, "client_id": self.client_id})
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise ClientError(f"the server refused the workflow (HTTP {status}): {describe_rejection(body)}")
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        status, raw = self._request("GET", f"/history/{prompt_id}")
        return json.loads(raw).get(prompt_id) if status == 200 else None

    def wait(self, prompt_id: str, timeout: float = 3600.0, on_event=None) -> dict:
        """Follow the prompt over the websocket (progress to on_event); fall back to polling /history."""
        sock = None
        try:
            sock = EventSocket(self.server, self.client_id, on_event)
        except (OSError, ValueError):
            pass
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                entry = self.history(prompt_id)
                if entry is not None and entry.get("status", {}).get("status_str") is not None:
                    return entry
                time.sleep(0.25)
            raise ClientError(f"prompt {prompt_id} not finished after {timeout:.0f} s")
        finally:
            if sock:
                sock.close()

    def download(self, history: dict, out_dir: str | os.PathLike) -> list[Path]:
        """Fetch every output file named in the history entry via /view into out_dir (atomic writes)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        saved = []
        for node_output in history.get("outputs", {}).values():
            for items in node_output.values():
                for item in items if isinstance(items, list) else []:
                    if not (isinstance(item, dict) and "filename" in item):
                        continue
                    query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                                    "type": item.get("type", "output")})
                    status, data = self._request("GET", f"/view?{query}")
                    if status != 200:
                        raise ClientError(f"GET /view {item['filename']} -> HTTP {status}")
                    target = out / Path(item["filename"]).name
                    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                    os.replace(tmp, target)
                    saved.append(target)
        return saved


def describe_rejection(body) -> str:
    """The error and each node's failing inputs from a 400 answer of /prompt."""
    if not isinstance(body, dict):
        return str(body)[:2000]
    parts = [str((body.get("error") or {}).get("message", ""))]
    for nid, info in (body.get("node_errors") or {}).items():
        for err in info.get("errors", []):
            parts.append(f"node {nid} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
    return "; ".join(p for p in parts if p)


class EventSocket:
    """The server's /ws events for one client id, handed to on_event as dicts on a reader thread;
    binary messages (sampling previews) are ignored."""

    def __init__(self, server: str, client_id: str, on_event=None):
        self.on_event = on_event
        self._ws = WebSocket(f"{server}/ws?{urllib.parse.urlencode({'clientId': client_id})}")
        self._ws.listen(self._on_message, name="comfy-client-events")

    def _on_message(self, message) -> None:
        if not message.binary and self.on_event:
            self.on_event(message.json())

    def close(self) -> None:
        self._ws.close()


def print_event(event: dict):
    kind, data = event.get("type"), event.get("data") or {}
    if kind == "progress":
        print(f"  node {data.get('node')}: step {data.get('value')}/{data.get('max')}", file=sys.stderr)
    elif kind == "executing" and data.get("node"):
        print(f"running node {data['node']}", file=sys.stderr)
    elif kind == "execution_error":
        print(f"error in node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message')}",
              file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/comfy_client.py", description=__doc__.split("\n\n")[0])
    p.add_argument("workflow", help="API-format workflow JSON (File > Export (API) in ComfyUI)")
    p.add_argument("--server", default="127.0.0.1:8188")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="prompt=..., negative=..., or NODE.input=value (NODE: id, class_type or title)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("-o", "--output", default="out", help="folder for the downloaded outputs")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        try:
            workflow = json.loads(Path(args.workflow).read_text())
        except ValueError as e:
            raise ValueError(f"{args.workflow}: not JSON ({e})") from None
        except OSError as e:
            raise ValueError(f"{args.workflow}: cannot read the workflow ({e.strerror or e})") from None
        client = Client(args.server)
        info = client.object_info()
        workflow = api_workflow(workflow, args.workflow, info)
        workflow = apply_overrides(workflow, args.set, args.seed, args.frames, info)
        prompt_id = client.queue(workflow)
        print(f"queued {prompt_id}", file=sys.stderr)
        history = client.wait(prompt_id, args.timeout, None if args.quiet else print_event)
        status = history.get("status", {})
        if status.get("status_str") != "success":
            messages = {name: data for name, data in status.get("messages", [])}
            err = messages.get("execution_error") or messages.get("execution_interrupted") or status
            raise ClientError(f"prompt {prompt_id} did not finish: {json.dumps(err)[:2000]}")
        for path in client.download(history, args.output):
            print(path)
        return 0
    except (ValueError, OSError, ClientError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)   # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
