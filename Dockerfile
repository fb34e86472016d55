# The photoroom-bg service: `docker compose up` (see docker-compose.yaml), or
#   docker build -t photoroom-bg-service . && docker run -p 127.0.0.1:8000:8000 \
#     -e PHOTOROOM_API_KEY -e PHOTOROOM_BG_TOKENS photoroom-bg-service
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.rst LICENSE ./
COPY photoroom_bg ./photoroom_bg
# the extras: add prefect for PHOTOROOM_BG_EXECUTOR=prefect (docker-compose.yaml does)
ARG EXTRAS=service,s3
RUN pip install ".[${EXTRAS}]" \
    && useradd --system --uid 10001 --home-dir /nonexistent photoroom \
    && mkdir -p /var/lib/photoroom-bg /var/lib/prefect-shared/storage \
    && chown photoroom /var/lib/photoroom-bg /var/lib/prefect-shared /var/lib/prefect-shared/storage

USER photoroom
WORKDIR /var/lib/photoroom-bg
ENV PHOTOROOM_BG_STATE_DIR=/var/lib/photoroom-bg
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
# Binding 0.0.0.0 needs PHOTOROOM_BG_TOKENS (or PHOTOROOM_BG_ALLOW_UNAUTHENTICATED=1 behind a
# gateway that authenticates): the service refuses to start open to the network otherwise.
CMD ["photoroom-bg", "serve", "--host", "0.0.0.0", "--port", "8000"]
