# mssgate as a container image, built without any network access.
#
# 1. Wheels first, with a Python 3.11 on the image's architecture (the image installs from them
#    with --no-index, so the build itself needs no package registry):
#      MSSGATE_COMPILE=1 python3.11 -m pip wheel --no-deps --wheel-dir wheels .   (optional:
#      the core compiled with mypyc, see README "Deployment"; pip prefers that wheel)
#      python3.11 -m pip wheel --wheel-dir wheels .
#    (or, with no local Python 3.11:
#      docker run --rm -v "$PWD":/src -w /src python:3.11-slim-bookworm pip wheel -w wheels .)
# 2. docker build -t mssgate .
#    podman build --format docker -t mssgate .   (the docker format keeps the HEALTHCHECK)
# 3. docker run -p 2525:2525 -v /etc/mssgate:/etc/mssgate:ro -v mssgate-data:/var/lib/mssgate \
#      mssgate
#
# BASE_IMAGE: any Debian-like image whose `python3` is 3.11+ with the venv module; the builder
# and the final stage use the same one, so the venv's interpreter path is valid in both. The
# tests use a Debian bookworm minbase made with debootstrap (python3, python3-venv,
# ca-certificates) and imported into podman.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- builder: a venv with mssgate and its dependencies, from the wheels only ------------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY wheels/ /wheels/
RUN python3 -m venv /opt/mssgate/venv \
    && /opt/mssgate/venv/bin/pip install --no-index --find-links /wheels mssgate
# pip and setuptools are not needed at run time; compile once so that the read-only venv
# needs no __pycache__ writes; fail the build now if the command does not even start.
RUN /opt/mssgate/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/mssgate/venv/bin/python -m compileall -q /opt/mssgate/venv/lib \
    && /opt/mssgate/venv/bin/mssgate check --help >/dev/null
COPY deploy/healthcheck.py /opt/mssgate/healthcheck.py

# -- final: the venv, an unprivileged user, nothing else ---------------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="mssgate" \
      org.opencontainers.image.description="SMTP relay keeping health e-mail inside the MSSanté trust space" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/mssgate/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    MSSGATE_POLICY=/etc/mssgate/policy.yaml
RUN groupadd --gid 10001 mssgate \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/mssgate \
       --no-create-home --shell /usr/sbin/nologin mssgate \
    && mkdir -p /etc/mssgate /var/lib/mssgate \
    && chown 10001:10001 /var/lib/mssgate \
    && chmod 0750 /var/lib/mssgate
COPY --from=builder /opt/mssgate /opt/mssgate

USER 10001:10001
WORKDIR /var/lib/mssgate
# /etc/mssgate: the policy and certificates (mount read-only); /var/lib/mssgate: audit trail,
# outbox folders, the national list's last good copy.
VOLUME ["/etc/mssgate", "/var/lib/mssgate"]
# 2525: SMTP (STARTTLS when the policy has listen.tls); 465: implicit TLS (listen.tls.
# implicit_port); 9925: /metrics, /healthz, /readyz (the policy's metrics section, host 0.0.0.0).
EXPOSE 2525 465 9925
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["/opt/mssgate/venv/bin/python", "/opt/mssgate/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/mssgate/venv/bin/mssgate"]
CMD ["serve", "--config", "/etc/mssgate/policy.yaml"]
