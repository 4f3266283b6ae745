# Sourced by the .ci scripts: helpers they share.

# WARD_CARGO_LOCK=/path: hold that flock around each cargo command (a machine shared by builders).
lock() { if [[ -n "${WARD_CARGO_LOCK:-}" ]]; then flock "$WARD_CARGO_LOCK" "$@"; else "$@"; fi; }

# CI tools (cargo-deny, cargo-fuzz, cargo-llvm-cov) live outside the clone, so a second run on the
# same machine finds them instead of compiling them again (minutes each). WARD_CI_TOOLS moves them.
ci_tools="${WARD_CI_TOOLS:-${CARGO_HOME:-$HOME/.cargo}/ward-ci-tools}"
export PATH="$ci_tools/bin:$PATH"

# need_tool BINARY CRATE VERSION: install CRATE@VERSION unless `BINARY --version` already says it.
# Tools are built without LTO and with light optimisation: they run for seconds, and a full
# release build of cargo-deny alone took 5 minutes of a CI run.
need_tool() {
  local bin="$1" crate="$2" version="$3"
  if [[ "$("$bin" --version 2>/dev/null)" != "$bin $version" ]]; then
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
      CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
      lock cargo install --locked --root "$ci_tools" "$crate@$version"
  fi
}
