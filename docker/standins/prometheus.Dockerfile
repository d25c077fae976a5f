# Stand-in for prom/prometheus (see python.Dockerfile): Debian bookworm's
# prometheus (2.42) with the official image's entrypoint, storage path and user,
# and wget for the compose healthcheck (the official image has busybox's).
ARG STANDIN_BASE=hmpps-standin/debian:bookworm
FROM ${STANDIN_BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus \
 && chown nobody:nogroup /prometheus
WORKDIR /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
