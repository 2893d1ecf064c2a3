# The collector image for users with a Docker engine and a registry (CI builds the same contents
# with `cargo xtask image`).
# docker build -f deploy/images/collector.Dockerfile -t peregrine-collector:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p peregrine-collector --bin peregrine-collector

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/peregrine-collector /usr/local/bin/peregrine-collector
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/peregrine-collector"]
