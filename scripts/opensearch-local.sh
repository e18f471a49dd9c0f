#!/usr/bin/env bash
# Install, start and stop a single-node OpenSearch with the k-NN (and optionally neural-search) plugin,
# fetched from Maven Central. No Docker needed. Idempotent; downloads are cached.
#
#   scripts/opensearch-local.sh start    # install if needed, start, wait for green, print the URL
#   scripts/opensearch-local.sh stop
#   scripts/opensearch-local.sh status
#
# Environment:
#   GENQ_OPENSEARCH_VERSION   (2.19.1)          OpenSearch version (plugins use <version>.0)
#   GENQ_OPENSEARCH_HOME      (/var/tmp/genq-search-opensearch)  install + data dir (must be readable by the run user)
#   GENQ_OPENSEARCH_PORT      (9200)
#   GENQ_OPENSEARCH_HEAP      (768m)
#   GENQ_OPENSEARCH_NEURAL    (1)               also install job-scheduler, ml-commons, neural-search (server-side hybrid)
#   GENQ_OPENSEARCH_USER      (genqos)          unprivileged user used when run as root (OpenSearch refuses root)
set -euo pipefail

VER=${GENQ_OPENSEARCH_VERSION:-2.19.1}
HOME_DIR=${GENQ_OPENSEARCH_HOME:-/var/tmp/genq-search-opensearch}
PORT=${GENQ_OPENSEARCH_PORT:-9200}
HEAP=${GENQ_OPENSEARCH_HEAP:-768m}
NEURAL=${GENQ_OPENSEARCH_NEURAL:-1}
RUN_USER=${GENQ_OPENSEARCH_USER:-genqos}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/genq-search/maven
NODE_DIR=$HOME_DIR/opensearch-$VER
URL=http://127.0.0.1:$PORT

log() { echo "[opensearch-local] $*" >&2; }

fetch() {  # fetch <groupId:artifactId:version:zip> -> path of the zip in the cache
  local coord=$1 g a v
  IFS=: read -r g a v _ <<<"$coord"
  local out=$CACHE/$a-$v.zip
  if [[ ! -s $out ]]; then
    mkdir -p "$CACHE"
    log "fetching $coord from Maven Central"
    mvn -q -B dependency:copy -Dartifact="$coord" -DoutputDirectory="$CACHE" -Dmdep.overWriteReleases=false >&2 \
      || { log "could not fetch $coord (is Maven Central reachable?)"; exit 1; }
  fi
  echo "$out"
}

painless_module() {  # the integ-test zip ships no modules; k-NN needs lang-painless: assemble it from its jars
  local dest=$1 work=$CACHE/lang-painless-$VER
  if [[ ! -f $work/.done ]]; then
    rm -rf "$work" && mkdir -p "$work"
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>local</groupId><artifactId>painless-module</artifactId><version>1</version>
<dependencies><dependency><groupId>org.opensearch.plugin</groupId><artifactId>lang-painless</artifactId>
<version>$VER</version></dependency></dependencies></project>
POM
    log "fetching lang-painless $VER and its jars from Maven Central"
    (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=jars >&2) \
      || { log "could not fetch lang-painless $VER"; exit 1; }
    touch "$work/.done"
  fi
  mkdir -p "$dest"
  cp "$work"/jars/{lang-painless,opensearch-scripting-painless-spi,antlr4-runtime,asm}-*.jar "$dest"/
  cat >"$dest/plugin-descriptor.properties" <<PROPS
description=An easy, safe and fast scripting language for OpenSearch
version=$VER
name=lang-painless
classname=org.opensearch.painless.PainlessPlugin
java.version=11
opensearch.version=$VER
extended.plugins=
has.native.controller=false
PROPS
  cat >"$dest/plugin-security.policy" <<'POLICY'
grant {
  permission java.lang.RuntimePermission "createClassLoader";
  permission java.lang.RuntimePermission "getClassLoader";
};
POLICY
}

as_user() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u "$RUN_USER" -- "$@"; else "$@"; fi
}

install() {
  if [[ -f $NODE_DIR/.installed ]]; then return; fi
  command -v java >/dev/null || { log "java not found: install a JDK 17+ (apt-get install openjdk-17-jre-headless)"; exit 1; }
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  local dist knn
  dist=$(fetch "org.opensearch.distribution.integ-test-zip:opensearch:$VER:zip")
  knn=$(fetch "org.opensearch.plugin:opensearch-knn:$VER.0:zip")
  local plugins=("$knn")
  if [[ $NEURAL == 1 ]]; then
    plugins+=("$(fetch "org.opensearch.plugin:opensearch-job-scheduler:$VER.0:zip")")
    plugins+=("$(fetch "org.opensearch.plugin:opensearch-ml-plugin:$VER.0:zip")")
    plugins+=("$(fetch "org.opensearch.plugin:neural-search:$VER.0:zip")")
  fi
  rm -rf "$NODE_DIR.tmp" && mkdir -p "$NODE_DIR.tmp"
  log "unpacking OpenSearch $VER"
  (cd "$NODE_DIR.tmp" && unzip -q "$dist" && mv opensearch-*/* . && rmdir opensearch-*)
  painless_module "$NODE_DIR.tmp/modules/lang-painless"
  for p in "${plugins[@]}"; do
    log "installing plugin $(basename "$p")"
    JAVA_HOME=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")} \
      "$NODE_DIR.tmp/bin/opensearch-plugin" install --batch "file://$p" >/dev/null
  done
  cat >>"$NODE_DIR.tmp/config/opensearch.yml" <<YML
cluster.name: genq-search-local
node.name: genq-local-1
network.host: 127.0.0.1
http.port: $PORT
discovery.type: single-node
path.data: $NODE_DIR/data
path.logs: $NODE_DIR/logs
action.auto_create_index: true
plugins.ml_commons.only_run_on_ml_node: false
YML
  if [[ -n ${GENQ_OPENSEARCH_WRITE_QUEUE:-} ]]; then
    echo "thread_pool.write.queue_size: $GENQ_OPENSEARCH_WRITE_QUEUE" >>"$NODE_DIR.tmp/config/opensearch.yml"
  fi
  rm -rf "$NODE_DIR" && mv "$NODE_DIR.tmp" "$NODE_DIR"
  mkdir -p "$NODE_DIR/data" "$NODE_DIR/logs"
  if [[ $(id -u) -eq 0 ]]; then
    id "$RUN_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
    chown -R "$RUN_USER" "$HOME_DIR"
    chmod 755 "$HOME_DIR"
  fi
  touch "$NODE_DIR/.installed"
}

running() {  # the pid file appears only once the node has bootstrapped, so fall back to the process table
  if [[ -f $NODE_DIR/pid ]]; then kill -0 "$(cat "$NODE_DIR/pid")" 2>/dev/null; else pgrep -f "$NODE_DIR/lib" >/dev/null; fi
}

start() {
  install
  if running; then log "already running at $URL"; echo "$URL"; return; fi
  local java_home=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")}
  log "starting OpenSearch $VER on $URL (heap $HEAP)"
  as_user env OPENSEARCH_JAVA_HOME="$java_home" OPENSEARCH_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP" \
    "$NODE_DIR/bin/opensearch" -d -p "$NODE_DIR/pid" >>"$NODE_DIR/logs/launcher.log" 2>&1
  for _ in $(seq 1 180); do
    if curl -fsS "$URL/_cluster/health?wait_for_status=green&timeout=1s" >/dev/null 2>&1; then
      log "green: $(curl -fsS "$URL/_cat/plugins?h=component" | sort -u | tr '\n' ' ')"
      echo "$URL"; return
    fi
    running || { log "OpenSearch exited; last log lines:"; tail -n 30 "$NODE_DIR/logs/genq-search-local.log" >&2 || true; exit 1; }
    sleep 1
  done
  log "OpenSearch did not become green in 180 s"; exit 1
}

stop() {
  if running; then
    if [[ -f $NODE_DIR/pid ]]; then kill "$(cat "$NODE_DIR/pid")"; else pkill -f "$NODE_DIR/lib"; fi
    for _ in $(seq 1 60); do running || break; sleep 1; done
    rm -f "$NODE_DIR/pid"; log "stopped"
  else
    log "not running"
  fi
}

case ${1:-start} in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running at $URL"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
