# Multi-stage build of the gatehouse binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin gatehouse

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
WORKDIR /data
ENV GATEHOUSE_BIND=0.0.0.0:7788
EXPOSE 7788
ENTRYPOINT ["gatehouse"]
CMD ["serve"]
