# PostgreSQL for the farm's results, from Debian's packages on the same base as EdgeFarm's images
# (no registry needed). Build from the repository's root:
#
#   docker build -f docker/postgres.Dockerfile --build-arg BASE=edgefarm-base:bookworm -t edgefarm-postgres .
#
# At its first start it makes the cluster in /var/lib/postgresql/data (a volume) with the user and
# database EdgeFarm uses; the password comes from $POSTGRES_PASSWORD at run time, never the image.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
LABEL io.edgefarm.image=postgres

RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /var/lib/postgresql/data /run/postgresql; \
    chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY docker/postgres-entrypoint.sh /usr/local/bin/edgefarm-postgres
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
USER postgres
EXPOSE 5432
# PostgreSQL's "fast" shutdown: clients are disconnected and the cluster is left clean.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=5s --retries=30 \
    CMD ["pg_isready", "--host", "127.0.0.1", "--username", "edgefarm", "--dbname", "edgefarm"]
ENTRYPOINT ["edgefarm-postgres"]
