# pvaflow image: every component (`pvaflow bridge|consume|collect|monitor|mirror ...`).
#   docker build -t pvaflow:0.1.0 .
# Runs as a non-root user and works with a read-only root filesystem (write only to /tmp).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /src/
COPY pvaflow /src/pvaflow
COPY bridge /src/bridge
COPY processors /src/processors
COPY collectors /src/collectors
COPY ops /src/ops
# The files extra gives the file-writer plugin HDF5/TIFF; plugin packages can be added with
# `pip install` in a derived image.
RUN pip install "/src[files]" \
    && rm -rf /src \
    && groupadd --gid 10001 pvaflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin pvaflow

USER 10001:10001
WORKDIR /tmp
ENV HOME=/tmp
ENTRYPOINT ["pvaflow"]
CMD ["--help"]
