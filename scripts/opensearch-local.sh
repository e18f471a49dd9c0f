#!/usr/bin/env bash
# Install, start and stop a single-node OpenSearch with the k-NN (and optionally neural-search) plugin,
# fetched from Maven Central. No Docker needed. Idempotent; downloads are cached.
# The integ-test zip ships no modules, so lang-painless, analysis-common (the `english` analyzer), ingest-common and
# mapper-extras are assembled from their Maven jars, as in a real distribution.
#
#   scripts/opensearch-local.sh start    # install if needed, start, wait for yellow, print the URL
#                                        # (all primaries up: replicas never get assigned on a single node)
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
#   GENQ_OPENSEARCH_MODULES   (analysis-common ingest-common mapper-extras)  modules a real distribution ships that the
#                             integ-test zip lacks, assembled from Maven jars (lang-painless always: k-NN needs it);
#                             a node installed with another module/plugin set is reinstalled on the next start (data kept)
set -euo pipefail

VER=${GENQ_OPENSEARCH_VERSION:-2.19.1}
HOME_DIR=${GENQ_OPENSEARCH_HOME:-/var/tmp/genq-search-opensearch}
PORT=${GENQ_OPENSEARCH_PORT:-9200}
HEAP=${GENQ_OPENSEARCH_HEAP:-768m}
NEURAL=${GENQ_OPENSEARCH_NEURAL:-1}
MODULES=${GENQ_OPENSEARCH_MODULES:-analysis-common ingest-common mapper-extras}
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

# Modules a real distribution ships but the integ-test zip does not, assembled from their Maven jars:
#   name|artifactId (org.opensearch.plugin)|classname|extended.plugins|description
# lang-painless comes first: k-NN, analysis-common and ingest-common extend it. Class names are the ones in the jars.
MODULE_SPECS=(
  "lang-painless|lang-painless|org.opensearch.painless.PainlessPlugin||An easy, safe and fast scripting language for OpenSearch"
  "analysis-common|analysis-common|org.opensearch.analysis.common.CommonAnalysisPlugin|lang-painless|Adds \"built in\" analyzers to OpenSearch."
  "ingest-common|ingest-common|org.opensearch.ingest.common.IngestCommonPlugin|lang-painless|Module for ingest processors that do not require additional security permissions or have large dependencies and resources"
  "mapper-extras|mapper-extras-client|org.opensearch.index.mapper.MapperExtrasPlugin||Adds advanced field mappers"
)

module_policy() {  # module_policy <name>: the plugin-security.policy a module needs, empty if none
  case $1 in
    lang-painless) cat <<'POLICY' ;;
grant {
  permission java.lang.RuntimePermission "createClassLoader";
  permission java.lang.RuntimePermission "getClassLoader";
};
POLICY
  esac
}

maven_module() {  # maven_module <node dir> <spec>: assemble modules/<name> from its jar and runtime deps
  local node=$1 name artifact classname extended description
  IFS='|' read -r name artifact classname extended description <<<"$2"
  local work=$CACHE/modules-$VER/$name dest=$node/modules/$name
  if [[ ! -f $work/.done ]]; then
    rm -rf "$work" && mkdir -p "$work"
    # org.opensearch:opensearch (the server and all it pulls in) is already in lib/: keep it out
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>local</groupId><artifactId>$name-module</artifactId><version>1</version>
<dependencies><dependency><groupId>org.opensearch.plugin</groupId><artifactId>$artifact</artifactId>
<version>$VER</version><exclusions><exclusion><groupId>org.opensearch</groupId><artifactId>opensearch</artifactId>
</exclusion></exclusions></dependency></dependencies></project>
POM
    log "fetching $artifact $VER and its jars from Maven Central"
    (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=jars >&2) \
      || { log "could not fetch $artifact $VER"; exit 1; }
    touch "$work/.done"
  fi
  mkdir -p "$dest"
  local jar base
  for jar in "$work"/jars/*.jar; do  # a jar the server or an extended module already has would be jar hell
    base=$(basename "$jar")
    [[ -e $node/lib/$base ]] && continue
    [[ -n $extended && -e $node/modules/$extended/$base ]] && continue
    cp "$jar" "$dest"/
  done
  cat >"$dest/plugin-descriptor.properties" <<PROPS
description=$description
version=$VER
name=$name
classname=$classname
java.version=11
opensearch.version=$VER
extended.plugins=$extended
has.native.controller=false
PROPS
  local policy
  policy=$(module_policy "$name")
  if [[ -n $policy ]]; then echo "$policy" >"$dest/plugin-security.policy"; fi
}

wanted_modules() {  # the MODULE_SPECS selected by GENQ_OPENSEARCH_MODULES (lang-painless always)
  local spec name
  for spec in "${MODULE_SPECS[@]}"; do
    name=${spec%%|*}
    if [[ $name == lang-painless || " $MODULES " == *" $name "* ]]; then echo "$spec"; fi
  done
}

manifest() {  # what an install is made of; a node whose .installed differs gets reinstalled
  echo "modules: $(wanted_modules | cut -d'|' -f1 | tr '\n' ' ')"
  echo "plugins: opensearch-knn$([[ $NEURAL == 1 ]] && echo ' opensearch-job-scheduler opensearch-ml-plugin neural-search')"
}

as_user() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u "$RUN_USER" -- "$@"; else "$@"; fi
}

install() {
  local want
  want=$(manifest)
  if [[ -f $NODE_DIR/.installed ]]; then
    [[ $(cat "$NODE_DIR/.installed") == "$want" ]] && return
    if running; then log "module/plugin set changed, but the node is running: stop it, then start to reinstall"; return; fi
    log "module/plugin set changed: reinstalling (data kept)"
  fi
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
  local spec
  while IFS= read -r spec; do maven_module "$NODE_DIR.tmp" "$spec"; done < <(wanted_modules)
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
YML
  if [[ $NEURAL == 1 ]]; then  # an unknown setting stops the node, so only with ml-commons installed
    echo "plugins.ml_commons.only_run_on_ml_node: false" >>"$NODE_DIR.tmp/config/opensearch.yml"
  fi
  if [[ -n ${GENQ_OPENSEARCH_WRITE_QUEUE:-} ]]; then
    echo "thread_pool.write.queue_size: $GENQ_OPENSEARCH_WRITE_QUEUE" >>"$NODE_DIR.tmp/config/opensearch.yml"
  fi
  if [[ -d $NODE_DIR/data ]]; then mv "$NODE_DIR/data" "$NODE_DIR/logs" "$NODE_DIR.tmp"/ 2>/dev/null || true; fi
  rm -rf "$NODE_DIR" && mv "$NODE_DIR.tmp" "$NODE_DIR"
  mkdir -p "$NODE_DIR/data" "$NODE_DIR/logs"
  if [[ $(id -u) -eq 0 ]]; then
    id "$RUN_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
    chown -R "$RUN_USER" "$HOME_DIR"
    chmod 755 "$HOME_DIR"
  fi
  echo "$want" >"$NODE_DIR/.installed"
}

running() {  # the pid file exists only between bootstrap and shutdown, so fall back to the process table
  local pid
  pid=$(cat "$NODE_DIR/pid" 2>/dev/null) || pid=
  if [[ -n $pid ]]; then kill -0 "$pid" 2>/dev/null; else pgrep -f "$NODE_DIR/lib" >/dev/null; fi
}

start() {
  install
  if running; then log "already running at $URL"; echo "$URL"; return; fi
  local java_home=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")}
  log "starting OpenSearch $VER on $URL (heap $HEAP)"
  as_user env OPENSEARCH_JAVA_HOME="$java_home" OPENSEARCH_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP" \
    "$NODE_DIR/bin/opensearch" -d -p "$NODE_DIR/pid" >>"$NODE_DIR/logs/launcher.log" 2>&1
  for _ in $(seq 1 180); do
    if curl -fsS "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; then
      log "up: $(curl -fsS "$URL/_cat/plugins?h=component" | sort -u | tr '\n' ' ')"
      log "modules: $(curl -fsS "$URL/_nodes/_local/plugins?filter_path=nodes.*.modules.name" | grep -o '"name":"[^"]*"' \
        | cut -d'"' -f4 | sort -u | tr '\n' ' ')"
      echo "$URL"; return
    fi
    running || { log "OpenSearch exited; last log lines:"; tail -n 30 "$NODE_DIR/logs/genq-search-local.log" >&2 || true; exit 1; }
    sleep 1
  done
  log "OpenSearch did not come up (yellow) in 180 s"; exit 1
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
