# mssgate as a container: runs `mssgate serve` as a non-root user, the policy mounted read-only.
#   docker build -t mssgate .
#   docker run -p 2525:2525 -v /etc/mssgate:/etc/mssgate:ro \
#     -e MSSGATE_ORDINARY_PASSWORD=... mssgate
# The base image is a build argument (a registry mirror, or a local image).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mssgate/src
COPY pyproject.toml README.md ./
COPY mssgate ./mssgate
RUN python3 -m venv /opt/mssgate/venv \
    && /opt/mssgate/venv/bin/pip install --no-cache-dir . \
    && rm -rf /opt/mssgate/src \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/mssgate mssgate

USER mssgate
WORKDIR /var/lib/mssgate
EXPOSE 2525
VOLUME ["/etc/mssgate"]
ENTRYPOINT ["/opt/mssgate/venv/bin/mssgate"]
CMD ["serve", "--config", "/etc/mssgate/policy.yaml"]
