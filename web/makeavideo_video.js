// MakeAVideo: plays a node's saved video inside the node.
//
// Any node of the pack whose execution result carries `ui.videos` (Video Save, Video Preview, or another
// node that returns nodes/video_io.py's preview_ui) gets a "mav_video_preview" DOM widget: a muted,
// looping, autoplaying <video> for mp4/webm, an <img> for gif/webp (the browser animates those), and a
// caption with format, frames, fps and size. The widget is not serialised into the workflow.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const WIDGET_NAME = "mav_video_preview";
const VIDEO_CONTAINERS = new Set(["mp4", "webm"]);
const MAX_PREVIEW_HEIGHT = 768;
const CAPTION_HEIGHT = 18;

function isOurNode(nodeData) {
  return nodeData?.name?.startsWith("MakeAVideo") || String(nodeData?.python_module ?? "").includes("MakeAVideo");
}

function fileUrl(entry) {
  const params = new URLSearchParams({
    filename: entry.filename,
    subfolder: entry.subfolder ?? "",
    type: entry.type ?? "output",
    rand: String(Math.random()),
  });
  return api.apiURL(`/view?${params}`);
}

function containerOf(entry) {
  return entry.container ?? entry.filename.split(".").pop().toLowerCase();
}

function captionText(entry) {
  const parts = [containerOf(entry)];
  if (entry.frame_count) parts.push(`${entry.frame_count} frames`);
  if (entry.fps) parts.push(`${Number(entry.fps).toFixed(2).replace(/\.?0+$/, "")} fps`);
  if (entry.width && entry.height) parts.push(`${entry.width}×${entry.height}`);
  return parts.join(" · ");
}

function previewWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (widget) return widget;
  const root = document.createElement("div");
  root.className = "mav-video-preview";
  Object.assign(root.style, { width: "100%", height: "100%", display: "flex", flexDirection: "column",
                              alignItems: "center", overflow: "hidden" });
  const media = document.createElement("div");
  media.className = "mav-video-media";
  Object.assign(media.style, { flex: "1 1 auto", width: "100%", minHeight: "0", display: "flex",
                               justifyContent: "center" });
  const caption = document.createElement("div");
  caption.className = "mav-video-caption";
  Object.assign(caption.style, { flex: "0 0 auto", font: "11px sans-serif", opacity: "0.7",
                                 height: `${CAPTION_HEIGHT}px`, lineHeight: `${CAPTION_HEIGHT}px` });
  root.append(media, caption);

  widget = node.addDOMWidget(WIDGET_NAME, "mav_video", root, {
    hideOnZoom: false,
    serialize: false,
    getMinHeight: () => {
      if (!widget.aspect) return 0;
      const width = Math.max(64, node.size[0] - 20);
      return Math.min(MAX_PREVIEW_HEIGHT, width * widget.aspect) + CAPTION_HEIGHT;
    },
  });
  widget.serialize = false;
  widget.aspect = 0;
  widget.mediaBox = media;
  widget.caption = caption;
  return widget;
}

function fitNode(node) {
  const wanted = node.computeSize();
  node.setSize([Math.max(node.size[0], wanted[0]), Math.max(node.size[1], wanted[1])]);
  node.graph?.setDirtyCanvas(true, true);
}

const SMALL_SOURCE = 256;   // smaller clips are shown with square pixels, not blurred

function makeMedia(entry, onSize) {
  const url = fileUrl(entry);
  const style = { width: "100%", height: "100%", objectFit: "contain" };
  if (entry.width && entry.width < SMALL_SOURCE) style.imageRendering = "pixelated";
  if (VIDEO_CONTAINERS.has(containerOf(entry))) {
    const video = document.createElement("video");
    Object.assign(video, { muted: true, loop: true, autoplay: true, playsInline: true, controls: true });
    Object.assign(video.style, style);
    video.addEventListener("loadedmetadata", () => onSize(video.videoWidth, video.videoHeight));
    video.addEventListener("loadeddata", () => video.play().catch(() => {}));
    video.src = url;
    return video;
  }
  const img = document.createElement("img");
  Object.assign(img.style, style);
  img.addEventListener("load", () => onSize(img.naturalWidth, img.naturalHeight));
  img.src = url;
  return img;
}

function showVideo(node, entry) {
  const widget = previewWidget(node);
  widget.entry = entry;
  widget.caption.textContent = captionText(entry);
  if (entry.width && entry.height) widget.aspect = entry.height / entry.width;
  const media = makeMedia(entry, (w, h) => {
    if (!w || !h) return;
    widget.aspect = h / w;
    fitNode(node);
  });
  media.dataset.filename = entry.filename;
  widget.mediaBox.replaceChildren(media);
  fitNode(node);
}

app.registerExtension({
  name: "MakeAVideo.VideoPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isOurNode(nodeData)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      const entry = output?.videos?.[0];
      if (entry?.filename) {
        try {
          showVideo(this, entry);
        } catch (error) {
          console.error("MakeAVideo: could not show the video preview", error);
        }
      }
      return result;
    };
  },
});
