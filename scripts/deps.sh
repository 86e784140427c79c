# scripts/deps.sh: sourced by scripts/test and scripts/demo; installs what is
# missing from Debian's packages (idempotent, quiet when everything is there).
HF_PACKAGES="build-essential pkgconf meson ninja-build file
  libuv1-dev libssh-dev libssl-dev libsqlite3-dev libjansson-dev sqlite3
  clang libclang-rt-14-dev valgrind
  openssh-server openssh-client sudo iproute2 procps psmisc curl
  supervisor jupyterhub node-configurable-http-proxy python3-venv python3-pip python3-wheel python3-setuptools python3-packaging
  ansible-core pdsh time chromium prometheus
  zlib1g-dev binutils gzip
  postgresql-15 postgresql-client-15 python3-psycopg2
  systemd systemd-container
  python3-jupyter-server python3-notebook"

hf_deps() {
  local missing=() p
  for p in $HF_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "hubfleet: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then echo "hubfleet: run as root to install packages" >&2; return 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || return 1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
}

# hf_build DIR [meson options...]: configure (once) and compile.
hf_build() {
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >/dev/null || return 1
  fi
  meson compile -C "$dir" >/dev/null || { meson compile -C "$dir"; return 1; }
}
