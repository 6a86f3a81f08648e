# Asgard node image: multi-stage, slim, non-root, health-checked.
#   docker build -t asgard .
#   docker run -p 7700:7700 -p 7701:7701 -p 7702:7702 -p 7703:7703 -p 3478:3478/udp -p 3478:3478 \
#              -v asgard-data:/data -v ./config:/config asgard
# The first start prints the admin token once (docker logs).

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/asgard
COPY pyproject.toml constraints.txt README.md ./
COPY node ./node
COPY wire ./wire
COPY store ./store
COPY protos ./protos
COPY bench ./bench
RUN /opt/asgard/bin/pip install -c constraints.txt .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin asgard \
 && mkdir -p /data /config && chown asgard:asgard /data /config
COPY --from=build /opt/asgard /opt/asgard
# The node reads ./asgard.toml when it exists (mount one into /config; `asgard init` writes a
# commented default), else runs on defaults; the store lives in the /data volume.
ENV PATH=/opt/asgard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ASGARD_SERVER__DATA_DIR=/data
USER asgard
WORKDIR /config
VOLUME ["/data", "/config"]
EXPOSE 7700 7701 7702 7703 3478/tcp 3478/udp
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7700/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["asgard"]
CMD ["serve"]
