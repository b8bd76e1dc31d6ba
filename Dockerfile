# syntax=docker/dockerfile:1
#
# dhcp-hive-mind container image: a release build in a Rust image, run from Debian slim as a
# non-root user whose one privilege is CAP_NET_BIND_SERVICE, as a file capability on the binary
# (a non-root process gets no capability from the runtime alone). No setuid binaries remain.
#
#   docker build -t dhcp-hive-mind:local .
#   docker run --rm dhcp-hive-mind:local check-config /etc/dhcp-hive-mind/config.json
#
# The container must keep NET_BIND_SERVICE in its bounding set (`--cap-drop ALL --cap-add
# NET_BIND_SERVICE` is the intended use): without it the kernel refuses to exec a binary that
# carries the capability. docs/deploy.md explains why, and what kernels older than 5.7 need.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Targets declared in Cargo.toml must exist for cargo to read the manifest, even unbuilt.
COPY benches ./benches
# Symbols stay (readable backtraces); debug info goes (a smaller image).
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dhcp-hive-mind \
    && install -D -m 0755 target/release/dhcp-hive-mind /out/dhcp-hive-mind

FROM debian:${DEBIAN_RELEASE}-slim
ARG HIVE_UID=10001
# ca-certificates: for rediss:// URLs. /run/dhcp-hive-mind: the slot locks of replicas that
# share a network namespace (see deploy/docker/entrypoint.sh).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && groupadd --system --gid "${HIVE_UID}" hive \
    && useradd --system --uid "${HIVE_UID}" --gid hive --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin hive \
    && install -d -o hive -g hive -m 0755 /run/dhcp-hive-mind \
    && find / -xdev -perm /6000 -type f -exec chmod a-s {} + \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/dhcp-hive-mind /usr/local/bin/dhcp-hive-mind
COPY deploy/docker/entrypoint.sh /usr/local/bin/hive-entrypoint
# The seed's sample config, so the image starts and `check-config` has something to read; real
# deployments mount their own over /etc/dhcp-hive-mind (a directory, so SIGHUP reloads see edits).
COPY config/config.json /etc/dhcp-hive-mind/config.json
# setcap needs libcap2-bin, installed and removed again in this one layer.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && setcap cap_net_bind_service=+ep /usr/local/bin/dhcp-hive-mind \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/* \
    && chmod 0755 /usr/local/bin/hive-entrypoint

ENV HIVE_CONFIG=/etc/dhcp-hive-mind/config.json \
    HIVE_HTTP_LISTEN=0.0.0.0:9067 \
    HIVE_LOG_FORMAT=json
USER ${HIVE_UID}:${HIVE_UID}
EXPOSE 67/udp 9067/tcp
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/hive-entrypoint", "probe"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hive-entrypoint"]
CMD ["serve"]
