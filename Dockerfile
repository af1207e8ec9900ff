# syntax=docker/dockerfile:1
# The lrpilot service: `docker build -t lrpilot .` then `docker run -p 8000:8000 lrpilot`.
# With no LRPILOT_DATABASE_URL it keeps its SQLite file in /var/lib/lrpilot (mount a volume there);
# docker-compose.yml runs it against PostgreSQL instead.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LRPILOT_DATABASE_URL=sqlite:////var/lib/lrpilot/lrpilot.db

# Only what the wheel is built from (see also .dockerignore).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
RUN pip install ".[postgres]" \
    && cd / && rm -rf /src \
    && lrpilot --help >/dev/null

RUN groupadd --system --gid 10001 lrpilot \
    && useradd --system --uid 10001 --gid lrpilot --home-dir /var/lib/lrpilot --create-home \
        --shell /usr/sbin/nologin lrpilot
WORKDIR /var/lib/lrpilot
USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["lrpilot", "serve", "--host", "0.0.0.0", "--port", "8000"]
