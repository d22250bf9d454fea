# syntax=docker/dockerfile:1
# Orthanc with the AI node's plugin, on the official Orthanc image (which ships the Python,
# DICOMweb and PostgreSQL plugins). Build context: the repository root (see docker-compose.yml).
# The same image runs the node's front door (nginx, `entrypoint.py door`), whose configuration
# is rendered by the same code as `ainode up`'s.
#
# Why this exact tag: Orthanc's Python plugin embeds the image's own system Python, and the
# plugin's packages must come from a virtual environment made by that same interpreter (see
# plugin/entry.py). The node requires Python 3.11 (pyproject.toml: requires-python >=3.11,<3.12).
# orthancteam/orthanc 24.3.3 to 25.4.0 are Debian 12 images with Python 3.11; 25.4.1 and later
# are Ubuntu images with Python 3.12 or newer, whose plugin cannot load this venv. 25.4.0 is the
# newest 3.11 image (Orthanc 1.12.7, Python plugin 5.0, PostgreSQL plugin 7.2). The build stops
# with a clear message if the interpreter is not 3.11.
FROM orthancteam/orthanc:25.4.0

USER root
RUN python3 -c 'import sys; v = sys.version_info[:2]; sys.exit(None if v == (3, 11) else "this Orthanc image embeds Python %d.%d; the node needs 3.11 (see docker/orthanc.Dockerfile)" % v)' \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv nginx openssl \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/ainode/venv/bin:$PATH \
    TCP_NODELAY=1
# TCP_NODELAY=1: DCMTK builds that keep Nagle's algorithm on switch it off with this variable
# (C-STORE ingest ~15x faster on Debian's build, orthanc/README.md); `ainode up` sets it too.

WORKDIR /opt/ainode

# The plugin's light dependencies only (pyproject's [project] dependencies, no torch), at the
# versions pinned in requirements.lock. This layer changes only with those two files.
COPY pyproject.toml requirements.lock README.md ./
RUN /usr/bin/python3 -m venv /opt/ainode/venv \
 && venv/bin/pip install -q -U "pip>=24" setuptools wheel \
 && /usr/bin/python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/plugin-requirements.txt \
 && venv/bin/pip install -q -c requirements.lock -r /tmp/plugin-requirements.txt \
 && rm /tmp/plugin-requirements.txt

# The node's code, installed editable like `make setup` does: settings and Orthanc's
# configuration are found relative to the checkout (/opt/ainode), as natively.
COPY src ./src
COPY plugin ./plugin
COPY worker ./worker
COPY configs ./configs
COPY orthanc ./orthanc
COPY routing-rules.yaml ./
COPY docker/entrypoint.py ./docker/
RUN venv/bin/pip install -q --no-deps -e . \
 && mkdir -p /var/lib/ainode \
 && chown orthanc:orthanc /var/lib/ainode

# The official image's non-root user (uid 999); the data volume is created owned by it.
USER orthanc
EXPOSE 8042 4242 8443
ENTRYPOINT ["/opt/ainode/venv/bin/python", "/opt/ainode/docker/entrypoint.py"]
CMD ["orthanc"]
