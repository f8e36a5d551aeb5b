# BASE: any image with Python 3.11, pip and useradd (a mirror of python:3.11-slim, say).
ARG BASE=python:3.11-slim
FROM ${BASE}
WORKDIR /app
COPY pyproject.toml alembic.ini ./
COPY alembic ./alembic
COPY dicomweb_server ./dicomweb_server
COPY openapi ./openapi
RUN pip install --no-cache-dir -e .  # editable: migrations are read from /app/alembic
COPY deploy/entrypoint.sh /usr/local/bin/dicomweb-entrypoint
# Not root.  The data volume holds the signing keys (`dicomweb-server init` creates them on the
# first start); with DATABASE_URL and S3 set nothing else is kept there.
RUN useradd --system --uid 10001 --home-dir /var/lib/dicomweb dicomweb \
    && mkdir -p /var/lib/dicomweb/keys && chown -R dicomweb /var/lib/dicomweb
ENV DICOMWEB_DATA_DIR=/var/lib/dicomweb \
    DICOMWEB_SIGNING_KEYS=/var/lib/dicomweb/keys/jwks.json \
    DICOMWEB_HOST=0.0.0.0
USER dicomweb
VOLUME /var/lib/dicomweb
EXPOSE 8080
ENTRYPOINT ["dicomweb-entrypoint"]
