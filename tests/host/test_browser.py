"""Video files and the web extension checked in a real browser (headless Chromium over the DevTools protocol).

Part 1 (no ComfyUI needed): files written by the CLI (`python -m mav_core generate -o ...`) and by the Video
Save node are served from 127.0.0.1; mp4/webm play in a <video> (readyState >= 2, duration = frames/fps
within one frame, currentTime advances), gif/webp decode with ImageDecoder to the right frame count and
duration, and the browser's own decoded pixels are compared with the source frames (PSNR).
Part 2 (COMFYUI_ROOT): the real ComfyUI front end loads a workflow ending in MakeAVideo Video Save, queues
it from the page, and the node shows a playing video; a screenshot goes to tests/host/artifacts/.
Part 3 (COMFYUI_ROOT, no browser): the host's folder_paths rules and VIDEO type through /prompt.

Needs `chromium` (Debian: apt-get install -y chromium); the test skips with the reason when it is missing.
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_server import REPO_ROOT, history_events, history_status  # also puts scripts/ on sys.path
from comfy_ws import WebSocket
from pack_import import import_pack
import synthetic_frames

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--window-size=1400,1000"]
FRAMES, FPS, HEIGHT, WIDTH = 8, 8.0, 32, 32
VIDEO_FORMATS = ("mp4", "webm", "gif", "webp", "png")


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


# ---------------------------------------------------------------------------------------------
# a small DevTools-protocol client (stdlib websocket)


class DevTools:
    """One page target of a headless Chromium: call(method, params), evaluate(js), screenshot(path)."""

    def __init__(self, ws_url: str):
        self._ws = WebSocket(ws_url, timeout=120, read_timeout=120)
        self._next_id = 0
        self.console: list[str] = []

    def _send(self, text: str) -> None:
        self._ws.send_text(text)

    def _receive(self) -> dict:
        return self._ws.receive().json()

    def call(self, method: str, params: dict | None = None) -> dict:
        self._next_id += 1
        self._send(json.dumps({"id": self._next_id, "method": method, "params": params or {}}))
        while True:
            message = self._receive()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))

    def evaluate(self, expression: str):
        """Run JS (an async function body's result when it is a Promise) and return its JSON value."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise AssertionError(f"JS failed: {text}\nconsole: {self.console[-10:]}")
        return result["result"].get("value")

    def navigate(self, url: str, ready: str = "document.readyState === 'complete'", timeout_s: float = 60) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for(ready, timeout_s)

    def wait_for(self, condition: str, timeout_s: float = 60, what: str | None = None):
        """Poll a JS expression in the page until it is truthy; return its value."""
        value = self.evaluate(f"""new Promise((resolve) => {{
            const end = Date.now() + {int(timeout_s * 1000)};
            const poll = () => {{
                let v = null;
                try {{ v = ({condition}); }} catch (e) {{ v = null; }}
                if (v || Date.now() > end) resolve(v || null); else setTimeout(poll, 100);
            }};
            poll();
        }})""")
        if not value:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or condition}\n"
                                 f"console: {self.console[-10:]}")
        return value

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._ws.close()


class Browser:
    """A headless Chromium with a fresh profile, niced (the CPU is shared)."""

    def __init__(self, executable: str, profile: Path):
        self.profile = profile
        self.process = subprocess.Popen(
            ["nice", "-n", "15", executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port (exit code {self.process.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.page = DevTools(page["webSocketDebuggerUrl"])
        self.page.call("Runtime.enable")
        self.page.call("Page.enable")

    def close(self) -> None:
        if getattr(self, "page", None):
            self.page.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium executable (apt-get install -y chromium, or set CHROMIUM=/path)")
    try:
        instance = Browser(executable, tmp_path_factory.mktemp("chromium_profile"))
    except RuntimeError as error:
        pytest.skip(f"chromium does not start headless here: {error}")
    try:
        yield instance.page
    finally:
        instance.close()


# ---------------------------------------------------------------------------------------------
# files to check: written by the CLI and by the Video Save node


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder served on 127.0.0.1 (a secure context, so ImageDecoder exists)."""
    root = tmp_path_factory.mktemp("served")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    (root / "index.html").write_text("<!doctype html><title>MakeAVideo video checks</title><body></body>")
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def moving_frames(count=FRAMES, height=HEIGHT, width=WIDTH) -> torch.Tensor:
    return synthetic_frames.moving_frames(count, height, width)


@pytest.fixture(scope="module")
def cli_files(served, tmp_path_factory):
    """`python -m mav_core generate --quality 100` into every format with the shipped MAV-Tiny weights (same
    seed, so every format holds the same frames); the PNG folder is the source."""
    from mav_core.cli.main import main as cli_main
    torch.set_num_threads(1)
    root, _ = served
    out = root / "cli"
    out.mkdir()
    files = {}
    for fmt in VIDEO_FORMATS:
        path = out / ("frames" if fmt == "png" else f"clip.{fmt}")
        args = ["generate", "a large red circle on a gray background", "-o", str(path), "--quality", "100",
                "--frames", str(FRAMES), "--fps", str(FPS), "--prior-steps", "5", "--steps", "5",
                "--multiplier", "1", "--upscale", "2", "--sr-steps", "2", "--seed", "3"]
        assert cli_main(args) == 0, f"CLI failed for {fmt}"
        files[fmt] = path
    from mav_core.io.video import read_video
    source, _ = read_video(files["png"])
    # the high-quality setting: lossless PNG and webp, mp4/webm >= 35 dB; gif is palette-limited (no bound)
    return {"files": files, "source": source,
            "min_psnr": {"png": math.inf, "webp": math.inf, "mp4": 35, "webm": 35, "gif": None}}


@pytest.fixture(scope="module")
def node_files(served):
    """MakeAVideo Video Save (quality 100) into every format, ComfyUI absent (stand-in output folder)."""
    root, _ = served
    video_io = import_pack().video_io
    if import_pack().host.HAS_COMFY:
        pytest.skip("runs the comfy-free node path")
    old = dict(video_io.standin_dirs)
    video_io.standin_dirs.update({"output": root / "node", "temp": root / "node_temp"})
    for d in (root / "node", root / "node_temp"):
        d.mkdir(exist_ok=True)
    frames = moving_frames()
    files = {}
    try:
        for fmt in VIDEO_FORMATS:
            out = video_io.VideoSave().save(frames, FPS, f"clips/{fmt}", fmt, 100, 0, False)
            files[fmt] = Path(out["result"][0])
    finally:
        video_io.standin_dirs.clear()
        video_io.standin_dirs.update(old)
    source = (frames * 255).round() / 255
    return {"files": files, "source": source, "min_psnr": {"png": math.inf, "webp": math.inf, "mp4": 35, "webm": 35,
                                                           "gif": 30}}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def rgba_to_rgb(data_b64: str, width: int, height: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data_b64), dtype=np.uint8).reshape(height, width, 4)[..., :3]


# JS helpers put on the page: decode what the browser shows into raw RGBA (base64) for Python.
PAGE_HELPERS = r"""
window.mavPixels = (source, width, height) => {
  const canvas = document.createElement('canvas');
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(source, 0, 0, width, height);
  const bytes = ctx.getImageData(0, 0, width, height).data;
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
};
window.mavCheckVideo = async (url, frames, fps) => {
  const video = document.createElement('video');
  video.muted = true; video.loop = false; video.preload = 'auto';
  document.body.appendChild(video);
  const failed = new Promise((_, reject) => video.addEventListener('error',
      () => reject(new Error('video error ' + (video.error && video.error.message)))));
  // a Blob URL is seekable even though the test server ignores Range requests
  video.src = URL.createObjectURL(await (await fetch(url)).blob());
  const waitFor = (test, ms) => Promise.race([failed, new Promise((resolve, reject) => {
    const end = Date.now() + ms;
    const poll = () => test() ? resolve() : (Date.now() > end ? reject(new Error('timeout')) : setTimeout(poll, 20));
    poll();
  })]);
  await waitFor(() => video.readyState >= 2, 15000);
  const result = { readyState: video.readyState, duration: video.duration,
                   width: video.videoWidth, height: video.videoHeight, pixels: [] };
  for (let k = 0; k < frames; k++) {  // seek to the middle of each frame and read it back
    const seeked = new Promise((resolve) => video.addEventListener('seeked', resolve, { once: true }));
    const presented = new Promise((resolve) => video.requestVideoFrameCallback((now, meta) => resolve(meta)));
    video.currentTime = (k + 0.5) / fps;
    await seeked;
    const meta = await Promise.race([presented, new Promise((resolve) => setTimeout(() => resolve(null), 2000))]);
    result.mediaTimes = (result.mediaTimes || []).concat([meta && meta.mediaTime]);
    await waitFor(() => video.readyState >= 2, 5000);
    result.pixels.push(window.mavPixels(video, video.videoWidth, video.videoHeight));
  }
  video.currentTime = 0;
  video.loop = true;
  const t0 = video.currentTime;
  await video.play();
  await new Promise((resolve) => setTimeout(resolve, 700));
  result.t0 = t0; result.t1 = video.currentTime; result.paused = video.paused;
  video.pause();
  video.remove();
  return result;
};
window.mavDecodeImage = async (url, type) => {
  const data = await (await fetch(url)).arrayBuffer();
  const decoder = new ImageDecoder({ data, type });
  await decoder.tracks.ready;
  await decoder.completed;
  const track = decoder.tracks.selectedTrack;
  const result = { frameCount: track.frameCount, animated: track.animated, durations: [], pixels: [] };
  for (let i = 0; i < track.frameCount; i++) {
    const { image } = await decoder.decode({ frameIndex: i });
    result.width = image.displayWidth; result.height = image.displayHeight;
    result.durations.push(image.duration / 1e6);
    result.pixels.push(window.mavPixels(image, image.displayWidth, image.displayHeight));
    image.close();
  }
  decoder.close();
  return result;
};
window.mavDecodeStill = async (url) => {
  const img = new Image();
  img.src = url;
  await img.decode();
  return { width: img.naturalWidth, height: img.naturalHeight, pixels: [window.mavPixels(img, img.naturalWidth, img.naturalHeight)] };
};
true
"""


@pytest.fixture(scope="module")
def page(browser, served):
    _, base = served
    browser.navigate(f"{base}/index.html")
    assert browser.evaluate(PAGE_HELPERS) is True
    assert browser.evaluate("typeof ImageDecoder") == "function", "ImageDecoder needs a secure context"
    return browser


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
@pytest.mark.parametrize("writer", ["cli", "node"])
def test_browser_plays_and_decodes(page, served, request, writer, fmt):
    written = request.getfixturevalue(f"{writer}_files")
    root, base = served
    path = written["files"][fmt]
    source = (written["source"].numpy() * 255).round().astype(np.uint8)
    frames, height, width = source.shape[:3]
    url = f"{base}/{path.relative_to(root).as_posix()}"
    if fmt in ("mp4", "webm"):
        info = page.evaluate(f"window.mavCheckVideo({json.dumps(url)}, {frames}, {FPS})")
        assert info["readyState"] >= 2
        assert abs(info["duration"] - frames / FPS) <= 1 / FPS + 1e-6, info["duration"]
        assert (info["width"], info["height"]) == (width, height)
        assert info["t1"] > info["t0"] and not info["paused"], "currentTime did not advance while playing"
    elif fmt in ("gif", "webp"):
        info = page.evaluate(f"window.mavDecodeImage({json.dumps(url)}, 'image/{fmt}')")
        assert info["frameCount"] == frames and info["animated"]
        assert (info["width"], info["height"]) == (width, height)
        assert sum(info["durations"]) == pytest.approx(frames / FPS, abs=0.011)
    else:  # PNG frame folder: every frame decodes in the browser
        files = sorted(path.glob("*.png"))
        assert len(files) == frames
        info = {"pixels": []}
        for file in files:
            still = page.evaluate(f"window.mavDecodeStill({json.dumps(url + '/' + file.name)})")
            assert (still["width"], still["height"]) == (width, height)
            info["pixels"] += still["pixels"]
    assert len(info["pixels"]) == frames
    shown = np.stack([rgba_to_rgb(p, width, height) for p in info["pixels"]])
    value = psnr(shown, source)
    print(f"{writer} {fmt}: browser-decoded PSNR {value:.2f} dB vs source frames")
    # every shown frame is closest to its own source frame: right order, no dropped or repeated frames
    table = [[psnr(shown[k], source[j]) for j in range(frames)] for k in range(frames)]
    for k, row in enumerate(table):
        others = max(v for j, v in enumerate(row) if j != k)
        assert row[k] > others + 1.0, f"shown frame {k} is not closest to source frame {k}: {np.round(row, 1)}"
    minimum = written["min_psnr"][fmt]
    if minimum is not None:
        assert value >= minimum, f"{writer} {fmt}: PSNR {value:.2f} dB < {minimum} dB"


# ---------------------------------------------------------------------------------------------
# part 2: the real ComfyUI front end


@pytest.fixture(scope="module")
def host_with_models(comfy_server):
    """The harness's makeavideo model folder filled with MAV-Tiny-layout weights (untrained unless shipped)."""
    shipped = REPO_ROOT / "mav_core" / "weights" / "mav-tiny"
    if not (shipped / "decoder.safetensors").is_file():
        target = comfy_server.models_dir / "mav-tiny"
        if not (target / "decoder.safetensors").is_file():
            from mav_core.cli.main import main as cli_main
            assert cli_main(["init", "--out", str(target)]) == 0
    return comfy_server


def text_to_video_graph(prefix: str, fmt: str) -> dict:
    return {
        "1": {"class_type": "MakeAVideoBundleLoader", "inputs": {"folder": "mav-tiny"}},
        "2": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": "a red ball moves right"}},
        "3": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": ""}},
        "4": {"class_type": "MakeAVideoPrior", "inputs": {"prior": ["1", 1], "conditioning": ["2", 0], "seed": 1,
                                                           "steps": 2, "cfg": 1.0}},
        "5": {"class_type": "MakeAVideoSampler",
              "inputs": {"decoder": ["1", 2], "positive": ["4", 0], "negative": ["3", 0], "seed": 1, "steps": 2,
                         "cfg": 4.0, "sampler_name": "ddim", "frames": 8, "fps": 8.0, "width": 32, "height": 32,
                         "denoise": 1.0}},
        "6": {"class_type": "MakeAVideoVideoSave",
              "inputs": {"frames": ["5", 0], "fps": ["5", 1], "filename_prefix": prefix, "format": fmt,
                         "quality": 85, "loop_count": 0, "pingpong": False}},
    }


def open_front_end(server, page) -> None:
    """The host's front end in the page, with the pack's extension registered."""
    # a fresh user gets the template browser first; mark the tutorial as done, as a returning user
    request = urllib.request.Request(f"{server.base_url}/settings/Comfy.TutorialCompleted", data=b"true",
                                     method="POST", headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(request, timeout=10).status == 200
    page.navigate(server.base_url, ready="window.app && window.app.graph && window.app.extensions && "
                                          "window.app.extensions.some(e => e.name === 'MakeAVideo.VideoPreview')",
                  timeout_s=120)


@pytest.mark.parametrize("fmt", ["mp4", "webm", "webp", "gif"])
def test_front_end_shows_the_saved_video_in_the_node(host_with_models, browser, fmt):
    server = host_with_models
    assert server.pack_import_errors() == [], server.log_tail(80)
    assert "MakeAVideoVideoSave" in server.object_info("MakeAVideoVideoSave")
    page = browser
    open_front_end(server, page)
    graph = text_to_video_graph(f"browser/ui_{fmt}", fmt)
    page.evaluate(f"(async () => {{ await window.app.loadApiJson({json.dumps(graph)}, 'makeavideo.json'); return true; }})()")
    save_id = page.wait_for("(window.app.graph.nodes.find(n => n.type === 'MakeAVideoVideoSave') || {}).id",
                            timeout_s=30, what="the Video Save node in the loaded graph")
    page.evaluate("(async () => { await window.app.queuePrompt(0, 1); return true; })()")   # as the Run button
    tag = "video" if fmt in ("mp4", "webm") else "img"
    widget = (f"window.app.graph.getNodeById({json.dumps(save_id)}).widgets"
              ".find(w => w.name === 'mav_video_preview')")
    media = f"({widget}).element.querySelector('{tag}')"
    loaded = f"{media}.readyState >= 2" if tag == "video" else f"{media}.complete && {media}.naturalWidth > 0"
    page.wait_for(f"({widget}) && {media} && {loaded}", timeout_s=240,
                  what=f"a loaded <{tag}> in the Video Save node")
    page.evaluate(f"""(() => {{
        window.app.canvas.centerOnNode(window.app.graph.getNodeById({json.dumps(save_id)}));
        window.app.canvas.setDirty(true, true);
        return true;
    }})()""")
    page.wait_for(f"(() => {{ const m = {media}; const r = m.getBoundingClientRect();"
                  " return r.width > 20 && r.height > 20 && document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === m; })()",
                  timeout_s=20, what=f"the <{tag}> of the Video Save node visible on the canvas")
    state = page.evaluate(f"""(async () => {{
        const m = {media};
        const times = [];
        for (let i = 0; i < 10; i++) {{
            times.push(m.currentTime);
            await new Promise((resolve) => setTimeout(resolve, 90));
        }}
        const state = {{ times, paused: m.paused, readyState: m.readyState, duration: m.duration,
                        src: m.currentSrc, width: m.naturalWidth || m.videoWidth, height: m.naturalHeight || m.videoHeight,
                        caption: ({widget}).element.textContent, filename: m.dataset.filename }};
        if (m.tagName === 'IMG') {{
            const decoder = new ImageDecoder({{ data: await (await fetch(m.currentSrc)).arrayBuffer(), type: 'image/{fmt}' }});
            await decoder.tracks.ready;
            state.frameCount = decoder.tracks.selectedTrack.frameCount;
            decoder.close();
        }}
        return state;
    }})()""")
    shot = page.screenshot(ARTIFACTS / f"video_save_node_{fmt}.png")
    print(f"screenshot of the Video Save node showing its {fmt}: {shot}")
    assert "8 frames" in state["caption"] and "/view?" in state["src"]
    assert (state["width"], state["height"]) == (32, 32)
    if tag == "video":
        times = state["times"]
        assert state["readyState"] >= 2 and not state["paused"]
        assert sum(b > a for a, b in zip(times, times[1:])) >= 5, f"currentTime did not advance: {state}"
        assert abs(state["duration"] - 8 / 8.0) <= 1 / 8.0 + 1e-6
    else:
        assert state["frameCount"] == 8, state
    saved = next(server.output_dir.rglob(state["filename"]))
    from mav_core.io.video import read_metadata
    workflow = json.loads(read_metadata(saved)["workflow"])   # the graph the page sent, embedded by the node
    assert any(node["type"] == "MakeAVideoVideoSave" for node in workflow["nodes"])
    prompt = json.loads(read_metadata(saved)["prompt"])
    assert prompt[str(save_id)]["class_type"] == "MakeAVideoVideoSave"
    if fmt != "gif":   # the front end reads workflows back from png/webp/webm/mp4, not gif
        mime = {"mp4": "video/mp4", "webm": "video/webm", "webp": "image/webp"}[fmt]
        page.evaluate(f"""(async () => {{
            const blob = await (await fetch({json.dumps(state["src"])})).blob();
            window.app.graph.clear();
            await window.app.handleFile(new File([blob], {json.dumps(state["filename"])}, {{ type: '{mime}' }}));
            return true;
        }})()""")
        prefix = page.wait_for("((window.app.graph.nodes.find(n => n.type === 'MakeAVideoVideoSave') || {}).widgets || [])"
                               ".map(w => w.value).find(v => typeof v === 'string' && v.startsWith('browser/'))",
                               timeout_s=20, what=f"the workflow dropped back from the saved {fmt}")
        assert prefix == f"browser/ui_{fmt}"


# ---------------------------------------------------------------------------------------------
# part 3: the host's folder_paths rules and VIDEO type (no browser)


def test_host_save_formats_and_metadata(host_with_models):
    from mav_core.io.video import read_metadata, read_video
    server = host_with_models
    for fmt in ("webm", "gif", "webp", "png"):
        history = server.run_prompt(text_to_video_graph(f"host/{fmt}", fmt), timeout=240)
        assert history_status(history) == "success", history.get("status")
        output = history["outputs"]["6"]
        if fmt == "png":
            assert len(output["images"]) == 8
            path = server.output_dir / output["images"][0]["subfolder"]
        else:
            (entry,) = output["videos"]
            path = server.output_dir / entry["subfolder"] / entry["filename"]
            assert entry["frame_count"] == 8 and entry["type"] == "output"
        frames, fps = read_video(path)
        assert frames.shape[0] == 8 and fps == pytest.approx(8.0, rel=0.02)
        assert json.loads(read_metadata(path)["prompt"])["6"]["inputs"]["format"] == fmt


@pytest.fixture(scope="module")
def separate_server(comfy_host_paths, tmp_path_factory):
    """A second host for graphs that fail on purpose: their tracebacks (which name the pack's files) stay out
    of the shared server's log, where tests/host/test_host_smoke.py looks for import errors."""
    from comfy_server import ComfyServer
    server = ComfyServer(host=comfy_host_paths, work_dir=tmp_path_factory.mktemp("comfy_host_errors"))
    with server.running("second ComfyUI"):
        yield server


def test_host_refuses_prefix_outside_output_folder(separate_server):
    server = separate_server
    before = set(server.work_dir.rglob("*"))
    for prefix in ("../../etc/makeavideo_escape", "/tmp/makeavideo_escape/x"):
        graph = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 3, "color": 0x3366CC}},
            "2": {"class_type": "MakeAVideoVideoSave",
                  "inputs": {"frames": ["1", 0], "fps": 8.0, "filename_prefix": prefix, "format": "gif",
                             "quality": 85, "loop_count": 0, "pingpong": False}},
        }
        history = server.run_prompt(graph, timeout=120)
        assert history_status(history) == "error"
        error = history_events(history)["execution_error"]
        assert error["node_id"] == "2" and "filename_prefix" in error["exception_message"], error
    assert not Path("/etc/makeavideo_escape_00001_.gif").exists() and not Path("/tmp/makeavideo_escape").exists()
    new = {p for p in set(server.work_dir.rglob("*")) - before if p.suffix == ".gif"}
    assert new == set()


def test_host_video_type_round_trip(host_with_models):
    server = host_with_models
    if "MakeAVideoFramesToVideo" not in server.object_info():
        pytest.skip("this host has no VIDEO type")
    from mav_core.io.video import read_video
    graph = text_to_video_graph("host/video_type", "webp")
    graph["7"] = {"class_type": "MakeAVideoFramesToVideo", "inputs": {"frames": ["5", 0], "fps": ["5", 1]}}
    graph["8"] = {"class_type": "MakeAVideoVideoToFrames", "inputs": {"video": ["7", 0]}}
    graph["6"]["inputs"].update({"frames": ["8", 0], "fps": ["8", 1]})
    graph["9"] = {"class_type": "SaveVideo", "inputs": {"video": ["7", 0], "filename_prefix": "host/builtin",
                                                         "format": "auto", "codec": "auto"}}
    history = server.run_prompt(graph, timeout=240)
    assert history_status(history) == "success", history.get("status")
    (entry,) = history["outputs"]["6"]["videos"]
    frames, fps = read_video(server.output_dir / entry["subfolder"] / entry["filename"])
    assert frames.shape[0] == 8 and fps == pytest.approx(8.0, rel=0.02)
    builtin = server.output_dir / history["outputs"]["9"]["images"][0]["subfolder"] / history["outputs"]["9"]["images"][0]["filename"]
    frames, fps = read_video(builtin)
    assert frames.shape[0] == 8 and fps == pytest.approx(8.0, rel=0.02)


def test_host_load_video_from_input_folder(host_with_models):
    """Load Video with the host's folder_paths: the file list, frame selection, and the upload flag."""
    from mav_core.io.video import read_video, write_video
    server = host_with_models
    frames = torch.zeros(30, 8, 40, 3)   # frame i shows i in binary as five black/white blocks
    for i in range(30):
        for b in range(5):
            if (i >> b) & 1:
                frames[i, :, 8 * b:8 * b + 8] = 1.0
    write_video(frames, server.input_dir / "numbers.mp4", fps=12.0, quality=90)
    spec = server.object_info("MakeAVideoLoadVideo")["MakeAVideoLoadVideo"]["input"]["required"]["video"]
    assert "numbers.mp4" in spec[0] and spec[1].get("video_upload") is True
    graph = {
        "1": {"class_type": "MakeAVideoLoadVideo",
              "inputs": {"video": "numbers.mp4", "frame_load_cap": 5, "skip_first_frames": 3, "select_every_nth": 4,
                         "force_width": 0, "force_height": 0}},
        "2": {"class_type": "MakeAVideoVideoSave",
              "inputs": {"frames": ["1", 0], "fps": ["1", 1], "filename_prefix": "host/loaded", "format": "png",
                         "quality": 100, "loop_count": 0, "pingpong": False}},
    }
    history = server.run_prompt(graph, timeout=240)
    assert history_status(history) == "success", history.get("status")
    folder = server.output_dir / history["outputs"]["2"]["images"][0]["subfolder"]
    loaded, fps = read_video(folder)
    numbers = [sum(1 << b for b in range(5) if float(f[:, 8 * b:8 * b + 8].mean()) > 0.5) for f in loaded]
    assert numbers == [3, 7, 11, 15, 19] and fps == pytest.approx(3.0, rel=0.01)


def test_host_preview_node_writes_to_temp(host_with_models):
    from mav_core.io.video import read_video
    server = host_with_models
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 5, "color": 0x3366CC}},
        "2": {"class_type": "MakeAVideoVideoPreview", "inputs": {"frames": ["1", 0], "fps": 6.0, "format": "webp"}},
    }
    history = server.run_prompt(graph, timeout=120)
    assert history_status(history) == "success", history.get("status")
    (entry,) = history["outputs"]["2"]["videos"]
    assert entry["type"] == "temp" and entry["frame_count"] == 5
    # ComfyUI puts its temp folder at <--temp-directory>/temp
    (path,) = [p for p in server.temp_dir.rglob(entry["filename"]) if p.parent.name == entry["subfolder"].split("/")[-1]]
    frames, fps = read_video(path)
    assert tuple(frames.shape) == (5, 24, 32, 3) and fps == pytest.approx(6.0, rel=0.02)
