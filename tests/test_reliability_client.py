"""scripts/comfy_client.py against hostile workflows: UI-format files are converted with the server's
/object_info (or refused in one line without it), nodes without `inputs` do not crash, and a misspelt
`--set NODE.input` is refused from the node's definition. Every error: one line, exit 2."""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))
client = pytest.importorskip("comfy_client")
from ui_to_api import ui_to_api  # noqa: E402

UI_WORKFLOWS = sorted(p for p in (ROOT / "workflows").glob("*.json") if not p.stem.endswith("_api"))


def _host(required, optional=None, output=()):
    inputs = {"required": required, **({"optional": optional} if optional else {})}
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()}, "output": list(output)}


HOST_NODES = {   # the host's nodes the example workflows use, declared as ComfyUI does
    "CreateVideo": _host({"images": ["IMAGE"], "fps": ["FLOAT", {"default": 30.0}]}, {"audio": ["AUDIO"]}, ["VIDEO"]),
    "SaveVideo": _host({"video": ["VIDEO"], "filename_prefix": ["STRING", {}], "format": [["auto", "mp4"], {}],
                        "codec": [["auto", "h264"], {}]}),
    "LoadImage": _host({"image": [["mav_start.png"], {"image_upload": True}]}, output=["IMAGE", "MASK"]),
    "ImageScale": _host({"image": ["IMAGE"], "upscale_method": [["area"], {}], "width": ["INT", {}],
                         "height": ["INT", {}], "crop": [["center", "disabled"], {}]}, output=["IMAGE"]),
    "SaveAnimatedWEBP": _host({"images": ["IMAGE"], "filename_prefix": ["STRING", {}], "fps": ["FLOAT", {}],
                               "lossless": ["BOOLEAN", {}], "quality": ["INT", {}], "method": [["default"], {}]}),
    "ImageBatch": _host({"image1": ["IMAGE"], "image2": ["IMAGE"]}, output=["IMAGE"]),
    "CLIPLoader": _host({"clip_name": [["clip_l.safetensors"], {}], "type": [["stable_diffusion"], {}]},
                        {"device": [["default", "cpu"], {}]}, ["CLIP"]),
    "CLIPTextEncode": _host({"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}, output=["CONDITIONING"]),
    "VAELoader": _host({"vae_name": [["vae.safetensors"], {}]}, output=["VAE"]),
    "VAEDecode": _host({"samples": ["LATENT"], "vae": ["VAE"]}, output=["IMAGE"]),
    "LoadVideo": _host({"file": [["mav_source.mp4"], {"video_upload": True}]}, output=["VIDEO"]),
    "GetVideoComponents": _host({"video": ["VIDEO"]}, output=["IMAGE", "AUDIO", "FLOAT"]),
}


def _spec(value):
    return [value[0] if isinstance(value[0], (str, list)) else str(value[0]), *value[1:]]


@pytest.fixture(scope="module")
def object_info(pack):
    """/object_info as ComfyUI builds it from the pack's nodes, plus the host's nodes the example
    workflows use."""
    info = {}
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        info[name] = {"input": {k: {n: _spec(v) for n, v in d.items()} for k, d in spec.items()},
                      "input_order": {k: list(d) for k, d in spec.items()},
                      "output": list(cls.RETURN_TYPES), "name": name, "display_name": name}
    return {**HOST_NODES, **info}


def _known_only(path: Path, info: dict) -> bool:
    return all(n["type"] in info for n in json.loads(path.read_text())["nodes"])


class _Server:
    """A stand-in ComfyUI: GET /object_info answers `info` (404 when None); POST /prompt records the
    workflow and refuses it (400), so nothing is queued."""

    def __init__(self, info):
        self.info, self.posted = info, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/object_info" and outer.info is not None:
                    self._answer(200, outer.info)
                else:
                    self._answer(404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posted.append(body["prompt"])
                self._answer(400, {"error": {"message": "refused by the test server"}, "node_errors": {}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(object_info):
    s = _Server(object_info)
    yield s
    s.close()


def _main(capsys, *argv):
    rc = client.main([str(a) for a in argv] + ["--quiet", "--timeout", "5"])
    err = capsys.readouterr().err.strip()
    return rc, err


def _one_line_error(rc, err):
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.name for p in UI_WORKFLOWS])
def test_a_ui_workflow_without_a_server_is_refused_in_one_line(path, capsys):
    rc, err = _main(capsys, path, "--server", "127.0.0.1:9", "--seed", "3")
    _one_line_error(rc, err)
    assert "UI-format workflow" in err and "/object_info" in err and path.name in err


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.name for p in UI_WORKFLOWS])
def test_a_ui_workflow_is_converted_with_the_servers_object_info(path, server, object_info, capsys):
    if not _known_only(path, object_info):
        pytest.skip("uses host nodes the stand-in server does not declare")
    rc, err = _main(capsys, path, "--server", server.address)
    _one_line_error(rc, err)
    assert "refused by the test server" in err
    assert server.posted == [ui_to_api(json.loads(path.read_text()), object_info)]


def test_the_text_to_video_ui_file_takes_overrides(server, object_info, capsys):
    path = ROOT / "workflows" / "text_to_video.json"
    rc, err = _main(capsys, path, "--server", server.address, "--seed", "7", "--set", "prompt=a green cross")
    _one_line_error(rc, err)
    wf = server.posted[0]
    assert {n["inputs"]["seed"] for n in wf.values() if "seed" in n["inputs"]} == {7}
    assert "a green cross" in json.dumps(wf)


@pytest.mark.parametrize("selector,name", [("MakeAVideoSampler", "stpes"), ("MakeAVideoUpscaler", "frame_chunks"),
                                           ("MakeAVideoTextEncode", "txt"), ("MakeAVideoPrior", "cfg_scale")])
def test_a_misspelt_input_is_refused_from_the_node_definition(server, selector, name, capsys):
    path = ROOT / "workflows" / "text_to_video_api.json"
    rc, err = _main(capsys, path, "--server", server.address, "--set", f"{selector}.{name}=3")
    _one_line_error(rc, err)
    assert f"{selector}.{name}" in err and f"has no input {name!r}" in err and server.posted == []


def test_a_declared_input_still_passes(server, capsys):
    rc, err = _main(capsys, ROOT / "workflows" / "text_to_video_api.json", "--server", server.address,
                    "--set", "MakeAVideoSampler.steps=3")
    _one_line_error(rc, err)
    assert "refused by the test server" in err
    assert [n["inputs"]["steps"] for n in server.posted[0].values() if n["class_type"] == "MakeAVideoSampler"] == [3]


def test_inputs_are_not_checked_without_object_info():
    wf = json.loads((ROOT / "workflows" / "text_to_video_api.json").read_text())
    out = client.apply_overrides(wf, ["MakeAVideoSampler.anything=1"])
    assert [n["inputs"]["anything"] for n in out.values() if n["class_type"] == "MakeAVideoSampler"] == [1]


@pytest.mark.parametrize("workflow,expected", [
    ({"1": {"class_type": "MakeAVideoSampler"}}, None),                       # no inputs: set one
    ({"1": {"class_type": "MakeAVideoSampler", "inputs": [1, 2]}}, "inputs must be a dict"),
    ({"1": {"inputs": {}}}, "not an API-format node"),
    ({"1": "MakeAVideoSampler"}, "not an API-format node"),
    ([1, 2], "expected an API-format workflow"),
    ({}, "expected an API-format workflow"),
])
def test_malformed_api_workflows(tmp_path, capsys, workflow, expected):
    if expected is None:
        out = client.apply_overrides(workflow, ["1.steps=3"], seed=None, frames=5)
        assert out["1"]["inputs"] == {"steps": 3, "frames": 5}
        return
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    rc, err = _main(capsys, path, "--server", "127.0.0.1:9")
    _one_line_error(rc, err)
    assert expected in err


@pytest.mark.parametrize("text,expected", [("{", "not JSON"), (None, "cannot read")])
def test_unreadable_workflow_files(tmp_path, capsys, text, expected):
    path = tmp_path / "wf.json"
    if text is not None:
        path.write_text(text)
    rc, err = _main(capsys, path, "--server", "127.0.0.1:9")
    _one_line_error(rc, err)
    assert expected in err and "wf.json" in err


def test_a_malformed_ui_workflow_is_one_line(server, capsys, tmp_path):
    path = tmp_path / "ui.json"
    path.write_text(json.dumps({"nodes": [{"id": 1}], "links": []}))
    rc, err = _main(capsys, path, "--server", server.address)
    _one_line_error(rc, err)
    assert "ui.json" in err and server.posted == []
