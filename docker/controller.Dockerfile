# EdgeFarm's controller: runs `edgefarm run`/`nightly` as a node of the farm's Ray cluster, and
# serves the dashboard (`edgefarm dashboard`). Build from the repository's root:
#
#   docker build -f docker/controller.Dockerfile -t edgefarm-controller .
#   docker build -f docker/controller.Dockerfile --build-arg BASE=edgefarm-base:bookworm -t edgefarm-controller .
#
# BASE: any Debian bookworm image; the default is the Python project's, a machine with no container
# registry uses the one docker/base.sh builds from Debian packages. docs/docker.md says more.
#
# Everything up to the project's install is the same in worker.Dockerfile, so the two images
# share those layers (the slow ones) and are built once.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS python
# Marks every image and build stage made from these files (the test clears its own left-overs by it).
LABEL io.edgefarm.image=edgefarm

# Python 3 with venv: the Python image has its own; a plain Debian base gets Debian's (3.11).
# libgomp1: the OpenMP runtime some engines' wheels expect from the system.
RUN set -eu; \
    need="libgomp1"; \
    python3 -c "import venv, ensurepip" 2>/dev/null || need="$need python3 python3-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates $need; \
    rm -rf /var/lib/apt/lists/*

# No root at run time: the services run as this user; their state is in /var/lib/edgefarm.
RUN useradd --create-home --uid 1000 --shell /bin/bash edgefarm \
    && mkdir -p /var/lib/edgefarm /farm \
    && chown edgefarm:edgefarm /var/lib/edgefarm
ENV VIRTUAL_ENV=/opt/edgefarm \
    PATH=/opt/edgefarm/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    EDGEFARM_HOME=/var/lib/edgefarm \
    RAY_USAGE_STATS_ENABLED=0
RUN python3 -m venv /opt/edgefarm

# EdgeFarm's requirements (with the postgres extra), read from pyproject.toml in a stage of their
# own: the file copied out of it changes only when they do, so an edit elsewhere in pyproject.toml
# (or in the sources) does not install every package again.
FROM python AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["postgres"]))' >/tmp/requirements.txt

FROM python
# PyTorch first, as its CPU build (EdgeFarm converts with it; PyPI's build brings GB of CUDA
# libraries): a wheel docker/base.sh left in docker/wheels/, else PyTorch's CPU index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY docker/wheels/ /tmp/wheels/
RUN set -eu; \
    if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then pip install /tmp/wheels/torch-*.whl; \
    else pip install --index-url "$TORCH_INDEX" torch; fi; \
    rm -rf /tmp/wheels
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY pyproject.toml README.md /tmp/src/
COPY controller /tmp/src/controller
COPY agent /tmp/src/agent
COPY dashboard /tmp/src/dashboard
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src \
    && edgefarm --help >/dev/null

# ---- the controller's own part ----
USER edgefarm
WORKDIR /farm
EXPOSE 8501
# The dashboard by default; docker/compose.yaml also runs this image as the Ray head and as the
# controller's Ray node, where `edgefarm run ... --ray-address ray-head:6379` is started.
CMD ["edgefarm", "dashboard", "--address", "0.0.0.0", "--port", "8501"]
