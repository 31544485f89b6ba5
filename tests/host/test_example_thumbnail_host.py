"""The front end's thumbnail of MakeAVideo Load Image's `examples/<name>` values: it asks the host's
/view?type=input&subfolder=examples&filename=<name> (the combo value split at its last '/'), which the host
answers from its input folder only; the pack's fallback (nodes/host.py register_input_fallback, registered by
nodes/image_sequence.py) answers it with the example file when the host has none, with the names
nodes/common.py example_path accepts, and nothing else. In headless Chromium the real front end's Load Image
node then shows the example as its thumbnail."""
from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import pytest
from PIL import Image

from comfy_server import REPO_ROOT
from test_browser import browser, open_front_end   # noqa: F401 (browser: the headless Chromium fixture)

EXAMPLES = REPO_ROOT / "examples"


def view(server, path: str = "/view", **query) -> tuple[int, bytes, str]:
    url = f"{server.base_url}{path}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), ""


def test_the_loader_lists_the_example_the_thumbnail_url_asks_for(comfy_server):
    assert comfy_server.pack_import_errors() == [], comfy_server.log_tail(80)
    listed = comfy_server.object_info("MakeAVideoLoadImage")["MakeAVideoLoadImage"]["input"]["required"]["image"][0]
    assert "examples/mav_first.png" in listed, listed


@pytest.mark.parametrize("path", ["/view", "/api/view"])
def test_an_example_image_is_served_for_its_thumbnail_url(comfy_server, path):
    for name in ("mav_first.png", "mav_start.png"):
        status, body, kind = view(comfy_server, path, filename=name, type="input", subfolder="examples")
        assert status == 200, (status, body[:200])
        assert body == (EXAMPLES / name).read_bytes() and kind == "image/png", kind


@pytest.mark.parametrize("query", [
    {"filename": "make_examples.py", "type": "input", "subfolder": "examples"},   # not an image
    {"filename": "mav_source.mp4", "type": "input", "subfolder": "examples"},     # not an image of Load Image
    {"filename": "mav_sequence", "type": "input", "subfolder": "examples"},       # a folder
    {"filename": "missing.png", "type": "input", "subfolder": "examples"},
    {"filename": ".hidden.png", "type": "input", "subfolder": "examples"},
    {"filename": "mav_first.png", "type": "output", "subfolder": "examples"},     # only the input type
    {"filename": "mav_first.png", "type": "input", "subfolder": "other"},
    {"filename": "mav_first.png", "type": "input"},
])
def test_other_names_and_places_keep_the_hosts_answer(comfy_server, query):
    status, body, _ = view(comfy_server, **query)
    assert status == 404, (query, status, body[:200])


def test_names_leaving_the_folder_are_refused(comfy_server):
    for name in ("../README.md", "..", "mav_sequence/../../README.md"):
        status, body, _ = view(comfy_server, filename=name, type="input", subfolder="examples")
        assert status in (400, 403, 404) and b"Make-A-Video" not in body, (name, status)
    status, _, _ = view(comfy_server, filename="README.md", type="input", subfolder="examples/..")
    assert status in (403, 404), status


def test_an_input_file_shadows_its_example(comfy_server):
    """As the loader itself: a file of the input folder under the same name wins, the host serves it."""
    own = comfy_server.input_dir / "examples" / "mav_last.png"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_bytes(b"not the example")
    try:
        status, body, _ = view(comfy_server, filename="mav_last.png", type="input", subfolder="examples")
        assert status == 200 and body == b"not the example", (status, body[:100])
    finally:
        own.unlink()
    status, body, _ = view(comfy_server, filename="mav_last.png", type="input", subfolder="examples")
    assert status == 200 and body == (EXAMPLES / "mav_last.png").read_bytes()


THUMBNAIL_JS = """(async () => {
  const node = LiteGraph.createNode("MakeAVideoLoadImage");
  window.app.graph.add(node);
  const widget = node.widgets.find(w => w.name === "image");
  widget.value = NAME;
  widget.callback?.(widget.value);
  for (let i = 0; i < 200; i++) {
    const img = node.imgs?.[0];
    if (img && img.complete && img.naturalWidth) break;
    await new Promise(r => setTimeout(r, 100));
  }
  const img = node.imgs?.[0];
  return {src: img?.src ?? null, width: img?.naturalWidth ?? 0, height: img?.naturalHeight ?? 0};
})()"""


def test_the_front_end_shows_the_example_as_the_nodes_thumbnail(comfy_server, browser):
    open_front_end(comfy_server, browser)
    shown = browser.evaluate(THUMBNAIL_JS.replace("NAME", '"examples/mav_first.png"'))
    print(shown)
    with Image.open(EXAMPLES / "mav_first.png") as image:
        assert (shown["width"], shown["height"]) == image.size, shown
    assert "subfolder=examples" in shown["src"] and "type=input" in shown["src"], shown
