# One image for the web app, the Celery worker and beat (see compose.yaml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY digest ./digest
COPY workers ./workers
COPY templates ./templates
COPY seeds ./seeds
RUN pip install --no-cache-dir -e .
ENV DIGEST_ENV=production
EXPOSE 8000
CMD ["digest", "serve", "--host", "0.0.0.0", "--port", "8000"]
