# XCloud customer registry: one image for `xcloud migrate`, `xcloud serve` and
# `xcloud clients ...`. The outbox relay runs inside `xcloud serve`.
#
# It installs the built wheel, as a user would: first `make dist` (the wheel and a wheel of
# each dependency in dist/), then `docker build .`; no network is needed during the build.
# PYTHON_IMAGE names the base (default: the official python:3.11-slim; where Docker Hub
# cannot be reached, scripts/stand-in-images.sh builds a local stand-in).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
COPY dist/ /wheels/
RUN test -n "$(ls /wheels/xcloud_registry-*.whl 2>/dev/null)" \
        || { echo "dist/ holds no xcloud_registry wheel: run make dist first" >&2; exit 1; } \
 && python -m venv /opt/xcloud \
 && /opt/xcloud/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /wheels xcloud-registry \
 && /opt/xcloud/bin/pip uninstall -y -q pip

# The runtime stage gets the virtualenv only: no wheels, no pip, no build leftovers.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/xcloud/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root runtime user; the code stays root-owned and read-only to it.
RUN groupadd --system --gid 10001 xcloud \
 && useradd --system --uid 10001 --gid xcloud --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin xcloud
COPY --from=build /opt/xcloud /opt/xcloud
USER xcloud
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["xcloud"]
CMD ["serve"]
