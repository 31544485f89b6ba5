"""Files: checkpoints (header checks, save/load), external formats and key converters, motion files, video
containers."""
