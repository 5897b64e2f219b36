#!/bin/sh
# Alertmanager's entrypoint in compose.monitoring.yaml. It writes the config Alertmanager
# reads: alertmanager.yml (beside this script) with the environment's receivers appended to
# its `default` receiver, from the container's variables:
#   ALERTMANAGER_WEBHOOK_URL                   a webhook (Slack, Teams, a pager's, ...)
#   ALERTMANAGER_EMAIL_TO, ALERTMANAGER_EMAIL_FROM, ALERTMANAGER_SMTP_HOST (host:port),
#   ALERTMANAGER_SMTP_USER, ALERTMANAGER_SMTP_PASSWORD (both empty: no SMTP login)
# The config goes to $TMPDIR (/tmp, a tmpfs: memory), so the secrets never reach a disk or the
# repository, and only shell built-ins handle them, so they never show in a process's argv.
#   alertmanager.sh [FLAG...]   write the config, then become Alertmanager with FLAGs
#   alertmanager.sh reload      write it again, check it, and have Alertmanager (PID 1) reload
set -eu

here=$(dirname "$0")
config="${TMPDIR:-/tmp}/alertmanager.yml"

fail() {
  echo "alertmanager.sh: $*" >&2
  exit 1
}

# yaml NAME VALUE: VALUE as a single-quoted YAML scalar (VALUE is the variable NAME's).
yaml() {
  case $2 in
    *"'"* | *'
'*) fail "$1 contains a single quote or a line break, which this config cannot hold" ;;
  esac
  printf "'%s'" "$2"
}

# write FILE: the config with the receivers of the environment, readable by its owner only.
write() {
  umask 077
  {
    cat "$here/alertmanager.yml"
    if [ -n "${ALERTMANAGER_WEBHOOK_URL:-}" ]; then
      printf '    webhook_configs:\n      - url: '
      yaml ALERTMANAGER_WEBHOOK_URL "$ALERTMANAGER_WEBHOOK_URL"
      printf '\n        send_resolved: true\n'
    fi
    if [ -n "${ALERTMANAGER_EMAIL_TO:-}" ]; then
      [ -n "${ALERTMANAGER_EMAIL_FROM:-}" ] || fail "ALERTMANAGER_EMAIL_TO needs ALERTMANAGER_EMAIL_FROM"
      [ -n "${ALERTMANAGER_SMTP_HOST:-}" ] || fail "ALERTMANAGER_EMAIL_TO needs ALERTMANAGER_SMTP_HOST (host:port)"
      printf '    email_configs:\n      - to: '
      yaml ALERTMANAGER_EMAIL_TO "$ALERTMANAGER_EMAIL_TO"
      printf '\n        from: '
      yaml ALERTMANAGER_EMAIL_FROM "$ALERTMANAGER_EMAIL_FROM"
      printf '\n        smarthost: '
      yaml ALERTMANAGER_SMTP_HOST "$ALERTMANAGER_SMTP_HOST"
      if [ -n "${ALERTMANAGER_SMTP_USER:-}" ]; then
        printf '\n        auth_username: '
        yaml ALERTMANAGER_SMTP_USER "$ALERTMANAGER_SMTP_USER"
        printf '\n        auth_password: '
        yaml ALERTMANAGER_SMTP_PASSWORD "${ALERTMANAGER_SMTP_PASSWORD:-}"
      fi
      printf '\n        send_resolved: true\n'
    fi
  } >"$1"
}

if [ "${1:-}" = reload ]; then
  write "$config.new"
  amtool check-config "$config.new" >/dev/null || fail "the new config was refused; the running one stays"
  mv "$config.new" "$config"
  kill -HUP 1
  exit 0
fi

write "$config"
if [ -z "${ALERTMANAGER_WEBHOOK_URL:-}${ALERTMANAGER_EMAIL_TO:-}" ]; then
  echo "alertmanager.sh: neither ALERTMANAGER_WEBHOOK_URL nor ALERTMANAGER_EMAIL_TO is set: alerts are only shown on Alertmanager's page" >&2
fi
exec alertmanager --config.file="$config" "$@"
