# ckpt-exporter container image.
#
#   docker build -t ckpt-exporter .
#   docker run --rm -p 9842:9842 ckpt-exporter demo --listen-address 0.0.0.0
#   docker run --rm -p 9842:9842 -e OPENAI_API_KEY -e CKPT_EXPORTER_JOBS=ftjob-abc ckpt-exporter
#
# BASE_IMAGE must provide python3 (>= 3.11) with the venv module. Both stages use it, so the venv
# made in the build stage finds its interpreter at the same path in the runtime stage
# (/usr/local/bin/python3 in the official image, /usr/bin/python3 in a Debian one).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build

# A package index mirror can be given with --build-arg PIP_INDEX_URL=...; it stays in this stage.
ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ckpt_exporter/ ckpt_exporter/

# Dependencies come within the ranges pyproject.toml gives. pip and setuptools are only needed to
# install, so they are removed before the venv is copied into the runtime image.
RUN /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/ckpt-exporter --help > /dev/null


FROM ${BASE_IMAGE}

ARG VERSION=dev
ARG SOURCE_URL=https://github.com/ckpt-exporter/ckpt-exporter

LABEL org.opencontainers.image.title="ckpt-exporter" \
      org.opencontainers.image.description="Prometheus exporter for OpenAI fine-tuning job checkpoints (train/valid loss and token accuracy)" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/venv /opt/venv

# A numeric user (the "nonroot" uid of distroless images) so that Kubernetes' runAsNonRoot can
# verify it without an /etc/passwd entry.
USER 65532:65532

EXPOSE 9842

ENTRYPOINT ["ckpt-exporter"]
