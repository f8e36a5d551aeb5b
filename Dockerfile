FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml alembic.ini ./
COPY alembic ./alembic
COPY dicomweb_server ./dicomweb_server
COPY openapi ./openapi
RUN pip install --no-cache-dir -e .  # editable: migrations are read from /app/alembic
# Migrations are applied by `serve` before the workers start.
CMD ["sh", "-c", "exec dicomweb-server serve --host ${DICOMWEB_HOST:-0.0.0.0} --port 8080 --workers ${DICOMWEB_WORKERS:-2}"]
