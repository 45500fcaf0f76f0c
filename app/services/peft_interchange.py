"""Prompt versions as files: export as a PEFT adapter (zip) or promptbank's own safetensors artifact, and import
a PEFT adapter (a zip, or its two files) as a new version of a task."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from sqlalchemy.orm import Session

from app.db.models import Prompt, Task
from app.engine.formats.artifact import Artifact
from app.engine.formats.peft_adapter import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    OtherBaseModel,
    PeftAdapter,
    UnsupportedAdapter,
    from_peft,
    to_peft,
)
from app.engine.methods import get_method
from app.engine.serving.runtime import ModelRuntime
from app.errors import Conflict, InvalidInput
from app.services import audit
from app.services.keys import Limits
from app.services.prompts import get_prompt, store_prompt

EXPORT_FORMATS = ("peft", "safetensors")


@dataclass(frozen=True)
class Exported:
    data: bytes
    media_type: str
    filename: str


def export_prompt(session: Session, prompt_id: int, fmt: str, runtime: ModelRuntime) -> Exported:
    """The version as a PEFT adapter zip (`peft`) or as the stored artifact (`safetensors`)."""
    prompt = get_prompt(session, prompt_id, with_tensors=True)
    stem = f"prompt-{prompt.id}"
    if fmt == "safetensors":
        return Exported(bytes(prompt.tensors), "application/octet-stream", f"{stem}.safetensors")
    if fmt != "peft":
        raise InvalidInput(f'unknown export format "{fmt}"; use one of: {", ".join(EXPORT_FORMATS)}', code="bad_format")
    frozen = runtime.wait(timeout=0)
    _check_same_model(prompt, frozen.identity.fingerprint)
    try:
        adapter = to_peft(Artifact.from_bytes(prompt.tensors), frozen, prompt.base_model_name)
    except UnsupportedAdapter as error:
        raise InvalidInput(str(error), code="export_unsupported") from error
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{stem}/{CONFIG_FILE}", json.dumps(adapter.config, indent=2, sort_keys=True))
        archive.writestr(f"{stem}/{WEIGHTS_FILE}", save_safetensors(adapter.tensors, metadata={"format": "pt"}))
    return Exported(buffer.getvalue(), "application/zip", f"{stem}-peft.zip")


def _check_same_model(prompt: Prompt, fingerprint: str) -> None:
    if prompt.base_model_fingerprint != fingerprint:
        raise Conflict(
            f"prompt {prompt.id} was trained on another base model ({prompt.base_model_name}, fingerprint "
            f"{prompt.base_model_fingerprint[:12]}...); this service serves {fingerprint[:12]}...",
            code="base_model_mismatch",
        )


def read_adapter_files(files: dict[str, bytes], max_bytes: int) -> PeftAdapter:
    """The adapter's config and tensors from an uploaded zip or its two files (keyed by file name)."""
    if len(files) == 1:
        name, data = next(iter(files.items()))
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise InvalidInput(
                f'"{name}" is not a zip; send a zip of a PEFT adapter folder, or its {CONFIG_FILE} and {WEIGHTS_FILE}',
                code="adapter_invalid",
            )
        files = _unzip(data, max_bytes)
    by_name = {PurePosixPath(name).name: data for name, data in files.items()}
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if name not in by_name]
    if missing:
        raise InvalidInput(
            f"the adapter lacks {' and '.join(missing)} (got {sorted(by_name)}); a PEFT adapter folder holds "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}",
            code="adapter_invalid",
        )
    try:
        config = json.loads(by_name[CONFIG_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"{CONFIG_FILE} is not valid JSON: {error}", code="adapter_invalid") from error
    if not isinstance(config, dict):
        raise InvalidInput(f"{CONFIG_FILE} must hold a JSON object", code="adapter_invalid")
    try:
        tensors: dict[str, torch.Tensor] = load_safetensors(by_name[WEIGHTS_FILE])
    except (SafetensorError, ValueError, OSError) as error:
        raise InvalidInput(f"{WEIGHTS_FILE} is not a safetensors file: {error}", code="adapter_invalid") from error
    return PeftAdapter(config, tensors)


def _unzip(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """The adapter files of a zip, refusing one that expands beyond max_bytes (a zip bomb)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            wanted = [
                info
                for info in archive.infolist()
                if not info.is_dir() and PurePosixPath(info.filename).name in (CONFIG_FILE, WEIGHTS_FILE)
            ]
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                if sum(PurePosixPath(info.filename).name == name for info in wanted) > 1:
                    raise InvalidInput(f"the zip holds more than one {name}; send one adapter", code="adapter_invalid")
            if sum(info.file_size for info in wanted) > max_bytes:
                raise InvalidInput(
                    f"the adapter expands to more than {max_bytes} bytes (PROMPTBANK_MAX_UPLOAD_BYTES)",
                    code="adapter_invalid",
                )
            return {info.filename: archive.read(info) for info in wanted}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as error:
        raise InvalidInput(f"the zip cannot be read: {error}", code="adapter_invalid") from error


def import_adapter(
    session: Session,
    *,
    task: Task,
    adapter: PeftAdapter,
    runtime: ModelRuntime,
    limits: Limits,
    fingerprint: str | None = None,
) -> Prompt:
    """Store a PEFT adapter as the task's next (active) version; 409 for another base model, 422 for an adapter
    kind not served here, 429 beyond the tenant's storage quota."""
    frozen = runtime.wait(timeout=0)
    identity = frozen.identity
    if fingerprint is not None and fingerprint != identity.fingerprint:
        raise Conflict(
            f"the adapter is declared for base model fingerprint {fingerprint[:12]}...; this service serves "
            f"{identity.name} ({identity.fingerprint[:12]}...)",
            code="base_model_mismatch",
        )
    try:
        artifact = from_peft(adapter, frozen, identity.name)
    except OtherBaseModel as error:
        raise Conflict(str(error), code="base_model_mismatch") from error
    except UnsupportedAdapter as error:
        raise InvalidInput(str(error), code="adapter_unsupported") from error
    method = get_method(artifact.method)
    try:
        module = method.load(frozen, artifact)  # the engine can serve it: the same check as a stored version
    except ValueError as error:
        raise InvalidInput(f"the adapter cannot be served: {error}", code="adapter_unsupported") from error
    peft_type = str(adapter.config.get("peft_type"))
    prompt = store_prompt(
        session,
        tenant=task.tenant,
        task_id=task.id,
        artifact=artifact,
        positions=module.positions,
        width=frozen.hidden_size,
        identity=identity,
        metrics={},
        hyperparameters={"method": artifact.method, "num_virtual_tokens": module.positions},
        job_id=None,
        dataset_id=None,
        lineage={
            "job_type": "import",
            "source": {
                "format": "peft",
                "peft_type": peft_type,
                "base_model": adapter.config.get("base_model_name_or_path"),
            },
        },
        limits=limits,
    )
    audit.record(session, "import", "prompt", prompt.id, {"task": task.name, "peft_type": peft_type})
    return prompt
