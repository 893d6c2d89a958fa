#!/usr/bin/env bash
# Install the real peers the tests and the benchmark use, from Debian's packages: swaks and
# msmtp (clients), Postfix (smtp-sink/smtp-source, and a private relay instance the tests start
# themselves); chromium (headless, to look at the HTML report); podman and debootstrap (to
# build the container image without any image registry). Postfix is installed without
# configuration and never started as a service.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have swaks || need+=(swaks)
have smtp-sink || need+=(postfix)
have msmtp || need+=(msmtp)
have chromium || need+=(chromium)          # renders the usage report in the tests
have podman || need+=(podman)              # builds the container image in the tests
have debootstrap || need+=(debootstrap)    # the image's base, made from Debian's packages
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing ${need[*]} (Debian packages)"
$SUDO apt-get update -qq
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
