# PostgreSQL 18 with regionsync's C capture triggers (ext/regionsync_capture).
#   docker build -f docker/postgres.Dockerfile -t regionsync-postgres:18 .
# The region configs say `capture: c`, so `regionsync migrate` refuses to go on with a
# server that lacks the extension instead of silently using the PL/pgSQL fallback.
FROM postgres:18 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc make libc6-dev postgresql-server-dev-18 \
 && rm -rf /var/lib/apt/lists/*
COPY ext/regionsync_capture /ext
RUN make -C /ext && make -C /ext install DESTDIR=/out

FROM postgres:18
COPY --from=build /out/ /
