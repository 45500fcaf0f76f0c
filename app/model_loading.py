"""Load the frozen model the settings name: a local HF folder, or a bundled model (converted once)."""

from __future__ import annotations

from app.config import Settings
from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.formats.bundled import ensure_bundled_model


def load_configured_model(settings: Settings) -> FrozenModel:
    """The FrozenModel for these settings; the bundled model is converted into data_dir on first use."""
    path = settings.model_path or ensure_bundled_model(settings.models_dir, settings.model)
    return load_frozen_model(path, device=settings.device, dtype=settings.dtype, name=settings.model_name)
