#!/usr/bin/env bash
# Install the real SMTP peers the tests use, from Debian's packages: swaks (a client) and
# Postfix's smtp-sink/smtp-source (an upstream and a load generator). Postfix is installed
# without configuration and never started as a system service by this script.
set -euo pipefail
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
{ command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ]; } || need+=(postfix)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing ${need[*]} (Debian packages)"
$SUDO apt-get update -qq
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
