# syntax=docker/dockerfile:1
# vxcap: AWS VPC Traffic Mirroring (VXLAN) -> Resurface. Build: docker build -t vxcap .
# Runs as the `vxcap run` DaemonSet of deploy/kubernetes/daemonset.yaml; see docs/deploy.md.

# ---- builder: compiles the Cython stages; the only stage with a compiler ----
FROM python:3.11-slim-bookworm AS builder
# build-essential: gcc for the src_c/*.pyx extensions. Debian package versions are not pinned: bookworm's
# security updates replace them and a pin would break the build on the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# One wheel for vxcap plus wheels of its dependencies, so the runtime stage installs offline and can never
# fall back to compiling anything.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime: no compiler, non-root ----
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="vxcap" \
      org.opencontainers.image.description="AWS VPC Traffic Mirroring (VXLAN) to Resurface API calls" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Capabilities, and why this way: the AF_PACKET ring needs CAP_NET_RAW. Kubernetes puts the capabilities
# added in a pod spec into the container's bounding set, but a process running as a non-root user gets none
# of them on execve (Kubernetes sets no ambient capabilities). A file capability does it: vxcap runs on its
# own copy of the interpreter carrying cap_net_raw+ep, so only the `vxcap` command is privileged (the
# HEALTHCHECK's plain python3 is not). Consequences, documented in docs/deploy.md:
#   * the pod must add NET_RAW (a file capability outside the bounding set makes execve fail with EPERM;
#     Docker's default set includes NET_RAW), and
#   * allowPrivilegeEscalation must stay true: no_new_privs makes the kernel ignore file capabilities.
# NET_ADMIN is deliberately not in the file: adding it would make `vxcap` unable to start in every pod
# that does not grant it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && cp /usr/local/bin/python3.11 /usr/local/bin/vxcap-python \
    && setcap cap_net_raw+ep /usr/local/bin/vxcap-python \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vxcap \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin vxcap

# Installed by the capable interpreter so that the `vxcap` console script's shebang names it.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    /usr/local/bin/vxcap-python -m pip install --no-cache-dir --no-index --find-links /wheels vxcap \
    && vxcap --version

USER 10001:10001
# Prometheus /metrics, /healthz and /readyz (VXCAP_METRICS_ADDR).
EXPOSE 9108
# Docker and Compose use this; Kubernetes ignores it and uses the DaemonSet's probes. It assumes the default
# VXCAP_METRICS_ADDR. There is no curl in the slim image: python's urllib raises on any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["vxcap", "run"]
