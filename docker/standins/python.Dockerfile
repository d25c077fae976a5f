# Stand-in for python:3.11-slim-bookworm, built by `make compose-check` where no
# registry can be reached: Debian bookworm's own Python 3.11 with venv and pip.
# It is used only when no image of that name exists locally; never pushed.
ARG STANDIN_BASE=hmpps-standin/debian:bookworm
FROM ${STANDIN_BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
