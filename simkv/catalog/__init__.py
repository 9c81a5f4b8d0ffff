"""The built-in catalog: model architectures and GPU specs as YAML data shipped in the package,
each entry with its source. User files may add entries (see `load_catalog_file`)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml
from pydantic import ValidationError

from simkv.specs import GpuSpec, ModelSpec


@lru_cache(maxsize=None)
def _read(name: str) -> dict:
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@lru_cache(maxsize=None)
def builtin_models() -> dict[str, ModelSpec]:
    """Every model in `models.yaml`, validated."""
    return {name: ModelSpec(**entry) for name, entry in _read("models.yaml").items()}


@lru_cache(maxsize=None)
def builtin_gpus() -> dict[str, GpuSpec]:
    """Every GPU in `gpus.yaml`, validated."""
    return {name: GpuSpec(**entry) for name, entry in _read("gpus.yaml").items()}


def parse_catalog(data: object, origin: str) -> tuple[dict[str, ModelSpec], dict[str, GpuSpec]]:
    """Validate a user catalog mapping `{models: {name: {...}}, gpus: {name: {...}}}`.

    Raises:
        ValueError: naming the entry and field at fault (the caller adds the file name).
    """
    if not isinstance(data, dict) or not set(data) <= {"models", "gpus"}:
        raise ValueError(f"{origin}: a catalog file is a mapping with keys 'models' and/or 'gpus'")
    models, gpus = {}, {}
    for key, cls, out in (("models", ModelSpec, models), ("gpus", GpuSpec, gpus)):
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{key}: expected a mapping of names to entries, got {type(section).__name__}")
        for name, entry in section.items():
            if not isinstance(entry, (dict, type(None))):
                raise ValueError(f"{key}.{name}: expected a mapping of fields, got {type(entry).__name__}")
            try:
                out[str(name)] = cls(**(entry or {}))
            except ValidationError as err:
                first = err.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"{key}.{name}.{loc}: {first['msg']}") from None
    return models, gpus
