"""The YAML presets, installed as attngan.configs so that `--config shapes` (or a path under
configs/ that is not there, as outside a clone) finds them; see `attngan.config.preset_path`."""
