# pvaflow image: every component (`pvaflow bridge|consume|collect|monitor|mirror ...`).
#   docker build -t pvaflow:0.1.0 .                  (a registry serves python:3.11-slim)
#   make image                                       (buildah, base made from Debian packages:
#                                                     --build-arg BASE=localhost/pvaflow-base)
# Runs as uid 10001 and works with a read-only root filesystem: it writes only to /tmp
# (HOME, TMPDIR, working directory, the monitor's data directory), so mount a writable /tmp.
# The base needs python3 (3.11+: tomllib) with the venv module, groupadd and useradd.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/pvaflow/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The dependencies (and the build backend) first, read from pyproject.toml, in their own layer:
# a change of the sources alone rebuilds only the small layer below. The files extra gives the file-writer plugin
# HDF5/TIFF; plugin packages can be added with `pip install` in a derived image.
COPY pyproject.toml /src/
RUN python3 -m venv /opt/pvaflow \
    && python3 -c "import tomllib; t = tomllib.load(open('/src/pyproject.toml', 'rb')); p = t['project']; print('\n'.join(t['build-system']['requires'] + p['dependencies'] + p['optional-dependencies']['files']))" >/src/requirements.txt \
    && pip install -r /src/requirements.txt \
    && rm -rf /src \
    && groupadd --gid 10001 pvaflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin pvaflow

COPY pyproject.toml README.md /src/
COPY pvaflow /src/pvaflow
COPY bridge /src/bridge
COPY processors /src/processors
COPY collectors /src/collectors
COPY ops /src/ops
RUN pip install --no-deps --no-build-isolation /src \
    && rm -rf /src

USER 10001:10001
WORKDIR /tmp
ENV HOME=/tmp \
    TMPDIR=/tmp
ENTRYPOINT ["pvaflow"]
CMD ["--help"]
