# syntax=docker/dockerfile:1
#
# snapback images. Not built in this project's CI (no container engine there): keep it simple
# enough to verify by reading.
#
#   docker build -t snapback .                                   # distroless, no shell
#   docker build --target snapback-postgres -t snapback-postgres .  # + PostgreSQL client tools
#
# Both run as a non-root user. The distroless image has no shell: `--pre-command` and
# `--post-command` run `sh -c`, so use the postgres image (or one of your own with a shell)
# when you need them; `--ready-url` needs no shell.

# ---------------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Sources only (.dockerignore keeps target/ and .git out); Cargo.lock pins every dependency.
COPY . .
# BuildKit caches keep the registry and incremental artefacts between builds; the binary is
# copied out of the cache mount so the next stage can see it.
# Every backend is in by default; a leaner image leaves some out, e.g.
#   --build-arg CARGO_FEATURES="--no-default-features --features backend-gcs"
# (README, "Backends", has what each adds to the binary).
ARG CARGO_FEATURES=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin snapback $CARGO_FEATURES \
    && install -D -m 0755 target/release/snapback /out/snapback

# ---------------------------------------------------------------------------------------------
# The sidecar with PostgreSQL's client tools (pg_basebackup, pg_isready) and a shell for hooks.
# Use the major version of your server: pg_basebackup must match it.
FROM postgres:16-bookworm AS snapback-postgres
COPY --from=build /out/snapback /usr/local/bin/snapback
# The postgres user (999) of the image, so restored files belong to the server.
USER 999:999
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/snapback"]

# ---------------------------------------------------------------------------------------------
# The default image: glibc + libgcc + CA certificates, nothing else (TLS is rustls with
# bundled roots; zstd is linked statically). Last, so that a plain `docker build` builds it.
FROM gcr.io/distroless/cc-debian12:nonroot AS snapback
COPY --from=build /out/snapback /usr/local/bin/snapback
# nonroot = 65532:65532; numeric, so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/snapback"]
