# syntax=docker/dockerfile:1
# The watcher's image: multi-stage, non-root, runs with a read-only root filesystem.
#   docker build -t chain-watcher:0.1.0 .
#   docker run --read-only --tmpfs /tmp chain-watcher:0.1.0 check-config -c /etc/watcher/config.yaml
# Its contents are tested without a Docker engine by tests/integration/test_image_readonly.py
# (the same wheel and bitcoinlib preparation, run in bubblewrap with / read-only).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the extensions (chains/bitcoin/_blockwalk.c, watcher/core/_probe.c); the slim
# image has Python's headers. Only this stage has it: the runtime image gets the built .so.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY watcher/ watcher/
COPY chains/ chains/
# A wheel of the project, installed with its pinned dependencies into a venv that the
# runtime stage copies whole; pip compiles the .pyc files here, so nothing is written later.
# The extension is optional to pip (a build without a compiler succeeds, interpreted); the image
# is not: the imports (WATCHER_BTC_WALK=compiled) fail the build if they are missing.
RUN python -m pip wheel --no-deps -w /dist . \
 && python -m venv /opt/watcher \
 && /opt/watcher/bin/pip install /dist/*.whl \
 && /opt/watcher/bin/pip uninstall -y pip \
 && cd / && WATCHER_BTC_WALK=compiled /opt/watcher/bin/python -c "import chains.bitcoin.walker, watcher.core._probe"
COPY deploy/docker/init_bitcoinlib.py /tmp/init_bitcoinlib.py
RUN BCL_DATA_DIR=/opt/bitcoinlib /opt/watcher/bin/python /tmp/init_bitcoinlib.py

FROM ${PYTHON_IMAGE}
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only; BCL_DATA_DIR: bitcoinlib's
# directory, prepared at build time (only read at run time; point it at a writable
# emptyDir if a future bitcoinlib feature needs to write).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/watcher/bin:$PATH \
    BCL_DATA_DIR=/opt/bitcoinlib \
    HOME=/tmp
RUN groupadd --system --gid 10001 watcher \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin watcher
COPY --from=build /opt/watcher /opt/watcher
COPY --from=build /opt/bitcoinlib /opt/bitcoinlib
COPY config/example.yaml /etc/watcher/config.yaml
USER 10001:10001
EXPOSE 9308
ENTRYPOINT ["watcher"]
CMD ["run", "--config", "/etc/watcher/config.yaml"]
