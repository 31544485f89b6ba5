"""What every model config dataclass shares: construction from a checkpoint header's JSON dict (unknown keys
are refused by name) and back."""
from __future__ import annotations

import json
from dataclasses import asdict, fields


class ConfigDict:
    """Mixin for config dataclasses saved in checkpoint headers (mav_config)."""

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self))
