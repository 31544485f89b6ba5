"""Evaluation: `python -m mav_core eval` (text->video, real-clip interpolation) and `eval --apps`."""
