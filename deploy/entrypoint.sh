#!/bin/sh
# The container's entrypoint (Dockerfile).  Every start: `dicomweb-server init` creates the signing
# key file in the data volume if it is not there yet (DICOMWEB_SIGNING_KEYS) and applies the
# migrations.  Then, with arguments, it runs that sub-command (`docker compose run --rm app
# tenants create st-mary`); without, the server, exec'd so that docker stop's SIGTERM reaches it.
set -eu
dicomweb-server init
if [ "$#" -gt 0 ]; then
    exec dicomweb-server "$@"
fi
exec dicomweb-server serve --host "${DICOMWEB_HOST:-0.0.0.0}" --port "${DICOMWEB_PORT:-8080}" \
    --workers "${DICOMWEB_WORKERS:-2}"
