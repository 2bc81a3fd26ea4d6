# Multi-stage build of the gatehouse binary. (No Docker engine runs on the project's build machines: this file
# is kept conventional and reviewed by reading.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin gatehouse

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --create-home gatehouse
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
USER gatehouse
WORKDIR /data
# The default SQLite file lives here; mount a volume to keep it.
VOLUME ["/data"]
ENV GATEHOUSE_BIND=0.0.0.0:7788 \
    DATABASE_URL=sqlite:///data/gatehouse.db?mode=rwc
EXPOSE 7788
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["gatehouse", "healthcheck"]
ENTRYPOINT ["gatehouse"]
CMD ["serve"]
