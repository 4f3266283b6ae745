# syntax=docker/dockerfile:1
# ward: one static-ish binary on distroless. Build:  docker build -t ward .
# Try it:  docker run --rm --read-only --tmpfs /tmp -p 8443:8443 -p 9901:9901 ward
# (the demo's keys, SQLite file and editable policy live in /tmp: a tmpfs here, an emptyDir in
# Kubernetes). Production runs `ward proxy` / `ward payments` with files from Secrets and a
# ConfigMap: see helm/ward and certs/README.md. No key, certificate or secret is in any layer.

# ---- build: the same .ci/release-build that .ci/run runs ----
# `cargo build --release --locked`, on x86_64 with the committed profile-guided optimisation
# profile (bench/pgo/; see bench/pgo.sh): the same code, laid out along the hot request path.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies in their own layer: the manifests with stub sources, built once and cached until
# Cargo.toml, Cargo.lock or the profile changes.
COPY Cargo.toml Cargo.lock ./
COPY .ci/release-build ./.ci/release-build
COPY bench/pgo ./bench/pgo
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && .ci/release-build \
 && rm -rf src

# The project itself: only what the binary is built from (see .dockerignore).
COPY src ./src
COPY policies ./policies
# Newer than the stub's build, so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
 && .ci/release-build

# ---- run: glibc and libgcc only; no shell, no package manager ----
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="ward" \
      org.opencontainers.image.description="A security sidecar for payments APIs" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/ward /usr/local/bin/ward
# distroless's nonroot user, numeric so runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
# No transparent huge pages for mimalloc's memory, also on nodes whose THP setting is `always`:
# huge pages held 7 KiB (HTTP/1.1) to 19 KiB (HTTP/2) more per idle connection (bench/idle.sh).
ENV MIMALLOC_ALLOW_THP=0
EXPOSE 8443 9901
# Through the binary itself: GET /healthz on the admin port (WARD_ADMIN_LISTEN, else 127.0.0.1:9901).
# For `ward payments` in Docker, set -e WARD_ADMIN_LISTEN=127.0.0.1:8081 so it probes the service's port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/ward", "health"]
ENTRYPOINT ["/usr/local/bin/ward"]
# The demo with its embedded defaults, reachable from outside the container.
CMD ["demo", "--listen", "0.0.0.0:8443", "--admin-listen", "0.0.0.0:9901"]
