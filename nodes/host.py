"""Where the nodes touch ComfyUI's model side: progress, Cancel, devices, dtypes, memory, previews and the
model folder (the one other place is nodes/model_bridge.py, whose MODEL is built from the host's own model
classes); and its web server, once: the /view fallback that shows the pack's example inputs as thumbnails.

With ComfyUI present these call comfy.utils / comfy.model_management / comfy.model_patcher / folder_paths:
models are loaded and offloaded by the host's model management (each behind a ModelPatcher, so the host
counts them, evicts them for other models, and `/free` unloads them), the free-memory check asks the host,
and the dtype of a diffusion model follows the host's UNet dtype for its device. Without it (unit tests,
plain Python) small stand-ins keep the node code itself unchanged: progress goes nowhere, Cancel never
fires, models run on the CPU in float32 and files are listed from `extra_model_dirs`.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..mav_core.models import family
from ..mav_core.inference import memory

MODEL_FOLDER = "makeavideo"
EXTENSIONS = {".safetensors"}
SHIPPED_DIR = family.WEIGHTS_DIR.parent   # mav_core/weights: lists the shipped files as "mav-tiny/<stage>.safetensors"

try:  # ComfyUI imports the pack with its own modules on sys.path
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _cu
    import folder_paths as _fp
    from comfy.cli_args import LatentPreviewMethod as _PreviewMethod
    from comfy.cli_args import args as _args
    HAS_COMFY = True
except ImportError:
    _mm = _patcher = _cu = _fp = _args = _PreviewMethod = None
    HAS_COMFY = False

try:  # the host's web server (present when ComfyUI runs as a server; not in plain Python or a bare import)
    from aiohttp import web as _web
    from server import PromptServer as _PromptServer
except ImportError:
    _web = _PromptServer = None

PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

extra_model_dirs: list[Path] = [SHIPPED_DIR]
"""Search folders when ComfyUI is absent (tests add theirs)."""


def register_memory_provider():
    """Let the core's memory check ask the host how much memory it can make free."""
    if HAS_COMFY:
        memory.set_free_memory_provider(free_memory)


def register_model_folder():
    """Add models/makeavideo and the shipped weights to folder_paths without dropping YAML-added paths."""
    if not HAS_COMFY:
        return
    default_dir = os.path.join(_fp.models_dir, MODEL_FOLDER)
    paths, exts = _fp.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    paths = list(paths)
    for p in (default_dir, str(SHIPPED_DIR)):
        if p not in paths:
            paths.append(p)
    _fp.folder_names_and_paths[MODEL_FOLDER] = (paths, set(exts) | EXTENSIONS)


def model_files() -> list[str]:
    """Checkpoint names (relative paths, '/'-separated) in every makeavideo folder."""
    if HAS_COMFY:
        return list(_fp.get_filename_list(MODEL_FOLDER))
    names = set()
    for root in extra_model_dirs:
        if root.is_dir():
            for path in root.rglob("*"):
                if path.suffix in EXTENSIONS and path.is_file():
                    names.add(path.relative_to(root).as_posix())
    return sorted(names)


def model_path(name: str, input_name: str = "ckpt_name") -> str:
    """Full path of a listed checkpoint; the error names the input and the folders searched."""
    if HAS_COMFY:
        path = _fp.get_full_path(MODEL_FOLDER, name)
        folders = _fp.get_folder_paths(MODEL_FOLDER)
    else:
        folders = [str(d) for d in extra_model_dirs]
        path = next((str(Path(d) / name) for d in folders if (Path(d) / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{input_name}: no checkpoint {name!r} in the {MODEL_FOLDER} folders {folders}")
    return path


LORA_FOLDER = "loras"
LORA_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}
extra_lora_dirs: list[Path] = []
"""LoRA search folders when ComfyUI is absent (tests add theirs)."""


def lora_files() -> list[str]:
    """LoRA file names in the host's `loras` folders (the ones its LoraLoader lists)."""
    if HAS_COMFY:
        return [n for n in _fp.get_filename_list(LORA_FOLDER) if Path(n).suffix.lower() in LORA_EXTENSIONS]
    return sorted({p.relative_to(root).as_posix() for root in extra_lora_dirs if root.is_dir()
                   for p in root.rglob("*") if p.suffix.lower() in LORA_EXTENSIONS and p.is_file()})


def lora_path(name: str, input_name: str = "lora_name") -> str:
    """Full path of a listed LoRA file; the error names the input and the folders searched."""
    if HAS_COMFY:
        path, folders = _fp.get_full_path(LORA_FOLDER, name), _fp.get_folder_paths(LORA_FOLDER)
    else:
        folders = [str(d) for d in extra_lora_dirs]
        path = next((str(Path(d) / name) for d in folders if (Path(d) / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{input_name}: no LoRA file {name!r} in the {LORA_FOLDER} folders {folders}")
    return path


def torch_device() -> torch.device:
    return _mm.get_torch_device() if HAS_COMFY else torch.device("cpu")


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if HAS_COMFY else torch.device("cpu")


def intermediate_device() -> torch.device:
    return _mm.intermediate_device() if HAS_COMFY else torch.device("cpu")


def diffusion_dtype(precision: str = "auto") -> torch.dtype | None:
    """The dtype to load a diffusion UNet in: the user's choice, else (auto) the host's UNet dtype for its
    compute device (float16 / bfloat16 on GPUs that run them fast, float32 on the CPU; the host's
    --fp32-unet / --fp16-unet / --bf16-unet flags apply); None without the host (the core's policy:
    float32 on the CPU, a half-precision file's own dtype on CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {PRECISIONS}")
    if precision != "auto":
        return DTYPES[precision]
    if HAS_COMFY:
        return _mm.unet_dtype(device=torch_device(), supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    return None


def free_memory(device) -> int:
    """Bytes the host can make free on `device` (its cached models' memory included)."""
    return int(_mm.get_free_memory(device))


class HostedModule(torch.nn.Module):
    """What the host's ModelPatcher holds: one of our modules under a plain container, so the attributes
    the host sets on its models (`device`, `model_loaded_weight_memory`, ...) never collide with ours.
    `hosted` names the container after the module (the host logs "Requested to load MakeAVideoSpaceTimeUNet")."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module
        self.device = next(module.parameters()).device


@functools.lru_cache(maxsize=None)
def _hosted_class(name: str) -> type:
    return type(f"MakeAVideo{name}", (HostedModule,), {})


def host_model(model):
    """The host's ModelPatcher for a LoadedModel (made once, kept on the model so the host's weak
    references stay alive as long as the node's output is cached)."""
    patcher = getattr(model, "host_patcher", None)
    if patcher is None:
        hosted = _hosted_class(type(model.module).__name__)(model.module)
        patcher = _patcher.ModelPatcher(hosted, load_device=torch_device(), offload_device=offload_device())
        model.host_patcher = patcher
    return patcher


@contextmanager
def models_on_device(*models, memory_required: int = 0):
    """Put the given LoadedModels on the compute device for a run. In ComfyUI the host's model management
    loads them (evicting other models to make room for them and `memory_required` bytes of activations) and
    keeps them loaded until it needs the memory or is asked to free it; without the host they are moved
    to the CPU stand-in device and back."""
    moved = [m for m in models if m is not None]
    if HAS_COMFY:
        _mm.load_models_gpu([host_model(m) for m in moved], memory_required=memory_required)
        yield torch_device()
        return
    device = torch_device()
    for m in moved:
        m.module.to(device)
    try:
        yield device
    finally:
        offload = offload_device()
        for m in moved:
            m.module.to(offload)


def previews_enabled() -> bool:
    """Whether the host shows sampling previews (its --preview-method is not 'none'); always without it."""
    if not HAS_COMFY:
        return True
    return _args.preview_method != _PreviewMethod.NoPreviews


def check_interrupted():
    """Raise the host's InterruptProcessingException if Cancel was pressed (no-op without the host)."""
    if HAS_COMFY:
        _mm.throw_exception_if_processing_interrupted()


class ProgressBar:
    """comfy.utils.ProgressBar, or a counter that only remembers the last update."""

    def __init__(self, total: int):
        self.total = total
        self.value = 0
        self.previews = 0
        self._bar = _cu.ProgressBar(total) if HAS_COMFY else None

    def update_absolute(self, value: int, total: int | None = None, preview=None):
        self.value, self.total = value, total or self.total
        self.previews += preview is not None
        if self._bar is not None:
            self._bar.update_absolute(value, total, preview)


# ---------------------------------------------------------------------------------------------
# files and the VIDEO type (nodes/video_io.py): folder_paths' output / temp / input folders and its
# `prefix_00001_` save paths, comfy_api's VIDEO type, the --disable-metadata flag


def io_folder(kind: str) -> Path | None:
    """The host's 'output' / 'temp' / 'input' folder; None without ComfyUI (the caller's stand-in applies)."""
    if not HAS_COMFY:
        return None
    getter = {"output": _fp.get_output_directory, "temp": _fp.get_temp_directory,
              "input": _fp.get_input_directory}[kind]
    return Path(getter())


def _standin_save_path(prefix: str, output_dir: str, width: int, height: int):
    """folder_paths.get_save_image_path without the host: same split, containment check and counter."""
    for key, value in (("%width%", width), ("%height%", height)):
        prefix = prefix.replace(key, str(value))
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise ValueError(f"Saving outside the output folder is not allowed: {os.path.abspath(full_output_folder)}")
    counter = 1
    try:
        for name in os.listdir(full_output_folder):
            if os.path.normcase(name).startswith(os.path.normcase(filename) + "_"):
                digits = name[len(filename) + 1:].split("_")[0]
                if digits.isdigit():
                    counter = max(counter, int(digits) + 1)
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
    return full_output_folder, filename, counter, subfolder, prefix


def save_image_path(filename_prefix: str, output_dir: str, width: int, height: int):
    """folder_paths.get_save_image_path: (folder, filename, counter, subfolder, prefix) for the next
    `prefix_NNNNN_` file in `output_dir`, making the folder; the same rules without ComfyUI. A prefix
    outside `output_dir` raises (the host a bare Exception, the stand-in a ValueError) saying
    "outside the output folder"."""
    if HAS_COMFY:
        return _fp.get_save_image_path(filename_prefix, output_dir, width, height)
    return _standin_save_path(filename_prefix, output_dir, width, height)


def annotated_input_file(name: str) -> tuple[Path, list[str]] | None:
    """The host's path for an input-file name ('name [output]' / 'name [temp]' annotations as the host's)
    and the folders it may lie in (input, output, temp); None without ComfyUI."""
    if not HAS_COMFY:
        return None
    return (Path(_fp.get_annotated_filepath(name)),
            [_fp.get_input_directory(), _fp.get_output_directory(), _fp.get_temp_directory()])


def metadata_disabled() -> bool:
    """Whether the host runs with --disable-metadata (never without it)."""
    return HAS_COMFY and bool(getattr(_args, "disable_metadata", False))


@functools.lru_cache(maxsize=None)
def _video_type() -> tuple[type, type] | None:
    """comfy_api's (VideoFromComponents, VideoComponents), or None (no ComfyUI, or one older than ~0.3.3x)."""
    try:
        from comfy_api.input_impl import VideoFromComponents
        from comfy_api.util import VideoComponents
    except ImportError:
        return None
    return VideoFromComponents, VideoComponents


def has_video_type() -> bool:
    """Whether the host has its VIDEO type (older hosts only get the IMAGE video nodes)."""
    return _video_type() is not None


def video_from_frames(frames: torch.Tensor, frame_rate):
    """The host's VIDEO made of IMAGE frames [F, H, W, 3] at `frame_rate` (a Fraction)."""
    if not has_video_type():
        raise RuntimeError("this ComfyUI has no VIDEO type (comfy_api.input_impl); use Video Save / Load Video")
    video_from_components, video_components = _video_type()
    return video_from_components(video_components(images=frames, frame_rate=frame_rate))


# the front end's thumbnails of input files: /view?type=input&subfolder=...&filename=...

VIEW_PATHS = ("/view", "/api/view")


def register_input_fallback(subfolder: str, resolve) -> bool:
    """Let the host's /view answer `type=input&subfolder=<subfolder>&filename=<name>` from `resolve`, when its
    input folder has no such file: the front end asks that URL for the thumbnail of a combo value
    `<subfolder>/<name>` (the loaders' `examples/<name>`), and the host serves input / output / temp only.
    resolve("<subfolder>/<name>") returns the file to send, or None (the host's own answer, 404, stands). A
    middleware on the host's server, which sees only those requests and only after the host answered 404.
    Returns whether it was registered (False without a running host's server)."""
    server = getattr(_PromptServer, "instance", None) if _PromptServer is not None else None
    if server is None or server.app.frozen:
        return False

    @_web.middleware
    async def input_fallback(request, handler):
        response = await handler(request)
        query = request.rel_url.query
        if (response.status != 404 or request.method != "GET" or request.path not in VIEW_PATHS
                or query.get("type") != "input" or query.get("subfolder") != subfolder):
            return response
        path = resolve(f"{subfolder}/{query.get('filename', '')}")
        return response if path is None else _web.FileResponse(path)

    server.app.middlewares.append(input_fallback)
    return True
