# XCloud customer registry: one image for `xcloud migrate`, `xcloud serve` and
# `xcloud clients ...`. The outbox relay runs inside `xcloud serve` (no separate process).
#
# NOTE: this image has not been built on the development machines (no Docker engine there);
# it was checked by reading only. See docker-compose.yml for the full stack.
FROM python:3.11-slim

# The migrations are read from <dir of the service package>/../sql. PYTHONPATH=/app makes
# `service` import from /app (ahead of the copy pip puts in site-packages), so /app/sql
# sits beside it.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

# Non-root runtime user; the code stays root-owned and read-only to it.
RUN groupadd --system --gid 10001 xcloud \
 && useradd --system --uid 10001 --gid xcloud --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin xcloud

COPY pyproject.toml README.md ./
COPY service/ ./service/
COPY sql/ ./sql/

# Runtime dependencies only (no [test] extra). The install also provides the `xcloud`
# console script. pip builds in-tree: drop build/ and the egg-info it leaves in /app
# (an egg-info on PYTHONPATH would shadow the installed distribution's metadata).
RUN pip install --no-cache-dir /app \
 && rm -rf /app/build /app/*.egg-info \
 && find /app -name '__pycache__' -type d -prune -exec rm -rf {} +

USER xcloud

EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["xcloud"]
CMD ["serve"]
