# The agent image for users with a Docker engine and a registry (CI cannot run this: no
# registry is reachable there; it builds the same contents with `cargo xtask image`).
# docker build -f deploy/images/agent.Dockerfile -t peregrine-agent:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libbpf-dev lsb-release wget gnupg \
 && wget -qO- https://apt.llvm.org/llvm.sh | bash -s -- 22 \
 && apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev clang-22 zlib1g-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*
RUN rustup toolchain install nightly --component rust-src \
 && PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker@0.13.0 --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN cargo xtask build --release

# distroless/cc: glibc and libgcc only, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/peregrine-agent /usr/local/bin/peregrine-agent
COPY --from=build /src/target/ebpf/bpfel-unknown-none/release/peregrine-ebpf /usr/lib/peregrine/peregrine-ebpf.o
# uid 0 with only the DaemonSet's capabilities (docs/DEPLOY.md): capabilities are not effective
# for other uids in Kubernetes.
USER 0
ENTRYPOINT ["/usr/local/bin/peregrine-agent"]
