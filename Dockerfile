# The Taskbox controller (API, gateway, ingestion) as an image, for `docker compose`.
# Build it with `taskbox image build --controller` (offline-capable: it prepares this context),
# or by hand from a prepared context:
#
#   context/
#     Dockerfile          this file
#     requirements.txt    the [project] dependencies of pyproject.toml
#     wheels/*.whl        pip download --only-binary=:all: -r requirements.txt -d wheels
#     dist/taskbox-*.whl  pip wheel --no-deps -w dist <the Taskbox checkout>
#     policies/*.yaml     the checkout's policies/
#
# The controller drives the engine through its socket, which compose mounts: whoever can reach
# that socket is root on the host, so this container is part of the trusted side.

ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS venv
COPY requirements.txt /build/requirements.txt
COPY wheels/ /build/wheels/
# The dependencies first, in their own layer: a change of Taskbox's own code then rebuilds
# only the small layer below (about 30 s saved on every such rebuild).
RUN set -eux; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/python -m pip install --no-index --find-links /build/wheels --no-cache-dir \
        --disable-pip-version-check -r /build/requirements.txt
COPY dist/ /build/dist/
RUN set -eux; \
    /opt/venv/bin/python -m pip install --no-index --no-deps --no-cache-dir \
        --disable-pip-version-check /build/dist/*.whl; \
    /opt/venv/bin/python -m pip check

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="taskbox-controller" \
      org.taskbox.image="controller"
# git: ingestion verifies bundles and writes commits with plumbing (the offline base has it).
RUN set -eux; \
    if ! command -v git >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends git ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=venv /opt/venv /opt/venv
COPY policies/ /app/policies/
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    TASKBOX_POLICIES_DIR=/app/policies \
    PYTHONUNBUFFERED=1
WORKDIR /app
ENTRYPOINT ["taskbox"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
