#!/usr/bin/env bash
# Renders Clusterra's nginx site from deploy/nginx/clusterra.conf.in to stdout (docs/deployment.md).
#
#   deploy/nginx-site.sh --workers 4 --server-name portal.example.org \
#       --tls-cert /etc/ssl/clusterra/fullchain.pem --tls-key /etc/ssl/clusterra/privkey.pem \
#       > /etc/nginx/sites-available/clusterra
#
#   --workers N          daphne processes clusterra-daphne@1..N (default 2)
#   --server-name NAME   the portal's host name(s), space-separated (default portal.example.org)
#   --socket-dir DIR     where daphne-<N>.sock live (default /run/clusterra)
#   --static-root DIR    CLUSTERRA_STATIC_ROOT, filled by collectstatic (default /var/www/clusterra/static)
#   --tls-cert FILE, --tls-key FILE   the operator's certificate chain and key (defaults under /etc/ssl/clusterra/)
#   --access-log FILE    (default /var/log/nginx/clusterra.access.log)
#   --plain-http ADDR:PORT   no TLS, one plain listener: for scripts/prod-local.sh, never for a public address
#   --max-upload-bytes N the portal's CLUSTERRA_FILES_MAX_UPLOAD_BYTES (default: that variable if set in the
#                        environment, else the portal's default 536870912 = 512 MiB). nginx accepts request
#                        bodies up to N + 1 MiB (the rest of the upload form: filebrowser/actions.py
#                        UPLOAD_FORM_HEADROOM); render again after changing the setting.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
workers=2
server_name=portal.example.org
socket_dir=/run/clusterra
static_root=/var/www/clusterra/static
tls_cert=/etc/ssl/clusterra/fullchain.pem
tls_key=/etc/ssl/clusterra/privkey.pem
access_log=/var/log/nginx/clusterra.access.log
listen=""
max_upload=${CLUSTERRA_FILES_MAX_UPLOAD_BYTES:-536870912}
headroom=1048576  # = filebrowser/actions.py UPLOAD_FORM_HEADROOM

die() { echo "nginx-site.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "$1 needs a value"
  case $1 in
    --workers) workers=$2 ;;
    --server-name) server_name=$2 ;;
    --socket-dir) socket_dir=$2 ;;
    --static-root) static_root=$2 ;;
    --tls-cert) tls_cert=$2 ;;
    --tls-key) tls_key=$2 ;;
    --access-log) access_log=$2 ;;
    --plain-http) listen=$2 ;;
    --max-upload-bytes) max_upload=$2 ;;
    *) die "unknown option $1" ;;
  esac
  shift 2
done
[[ $workers =~ ^[1-9][0-9]?$ ]] || die "--workers must be a number from 1 to 99, got '$workers'"
[[ $max_upload =~ ^[1-9][0-9]{0,14}$ ]] || die "--max-upload-bytes must be a number of bytes, got '$max_upload'"
# Values end up in nginx syntax: no quotes, semicolons, braces or other surprises.
safe='^[][A-Za-z0-9_./:* -]*$'  # host names, paths, [::1]:8080
for value in "$server_name" "$socket_dir" "$static_root" "$tls_cert" "$tls_key" "$access_log" "$listen"; do
  [[ $value =~ $safe ]] || die "unsafe characters in '$value'"
done
for dir in "$socket_dir" "$static_root"; do
  [[ $dir = /* ]] || die "'$dir' must be an absolute path"
done

pool="" upstreams=""
for n in $(seq 1 "$workers"); do
  pool+="    server unix:$socket_dir/daphne-$n.sock max_fails=1 fail_timeout=10s;"$'\n'
  upstreams+="upstream clusterra_w$n { server unix:$socket_dir/daphne-$n.sock; }"$'\n'
done
mode=tls
[ -n "$listen" ] && mode=plain

POOL=${pool%$'\n'} UPSTREAMS=${upstreams%$'\n'} MODE=$mode SERVER_NAME=$server_name TLS_CERT=$tls_cert \
TLS_KEY=$tls_key LISTEN=$listen STATIC_ROOT=${static_root%/} ACCESS_LOG=$access_log \
MAX_BODY=$((max_upload + headroom)) \
awk '
  function fill(line,   names, i, name) {
    split("SERVER_NAME TLS_CERT TLS_KEY LISTEN STATIC_ROOT ACCESS_LOG MAX_BODY", names, " ")
    for (i = 1; i in names; i++) {
      name = names[i]
      while (index(line, "@" name "@")) {
        line = substr(line, 1, index(line, "@" name "@") - 1) ENVIRON[name] substr(line, index(line, "@" name "@") + length(name) + 2)
      }
    }
    return line
  }
  /^#@(tls|plain)\{$/ { block = substr($0, 3, length($0) - 3); next }
  /^#@(tls|plain)\}$/ { block = ""; next }
  block != "" && block != ENVIRON["MODE"] { next }
  $0 == "@POOL_SERVERS@" { print ENVIRON["POOL"]; next }
  $0 == "@WORKER_UPSTREAMS@" { print ENVIRON["UPSTREAMS"]; next }
  { print fill($0) }
' "$here/nginx/clusterra.conf.in"
