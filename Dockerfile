FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY llmq ./llmq
# api/ and workers/ hold the framework entry points (api.asgi:app, workers.celery).
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system --uid 10001 llmq
USER llmq
EXPOSE 8000
CMD ["llmq", "api", "--host", "0.0.0.0", "--port", "8000"]
