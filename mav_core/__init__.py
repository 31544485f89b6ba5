"""mav_core: the host-free PyTorch core of ComfyUI-MakeAVideo (Make-A-Video, Singer et al. 2022).

Never imports ComfyUI. Stages (prior, spatiotemporal decoder, frame interpolator, upscalers) are
`SpaceTimeUNet`s and small modules configured by dataclasses; `mav_core.inference.pipeline` chains them.
"""

__version__ = "0.1.0"
