# Stand-in for redis:7.2-bookworm (see python.Dockerfile): Debian bookworm's
# redis-server (7.0) and redis-cli, run as the redis user from /data like the
# official image, so that a named volume at /data starts owned by that user.
ARG STANDIN_BASE=hmpps-standin/debian:bookworm
FROM ${STANDIN_BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data /usr/local/etc/redis \
 && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
