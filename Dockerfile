# Nexus, built in one stage and run from a slim one, as uid 10001 (deploy/nexus.yaml runs
# it so). .dockerignore keeps target/ and local databases out of the context.
#   docker build -t nexus:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin nexus

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home nexus
COPY --from=build /src/target/release/nexus /usr/local/bin/nexus
USER 10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/nexus"]
CMD ["serve"]
