# shellcheck shell=bash
# Headless Chromium for the admin page's browser tests (tests/admin_page/).
# Sourced by .ci/run; defines `browser_install`, which installs Debian's `chromium` and
# `chromium-driver` non-interactively when they are missing and exports where they are:
#   CHROME=/usr/bin/chromium  CHROMEDRIVER=/usr/bin/chromedriver
# The tests start chromedriver themselves on a free loopback port, with a fresh profile.

browser_install() {
  local chrome chromedriver
  chrome=$(command -v chromium || true)
  chromedriver=$(command -v chromedriver || true)
  if [ -z "$chrome" ] || [ -z "$chromedriver" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "chromium/chromedriver missing and not root: cannot install them" >&2
      return 1
    fi
    echo "installing chromium and chromium-driver"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver fonts-liberation fonts-dejavu-core >/dev/null
    chrome=$(command -v chromium)
    chromedriver=$(command -v chromedriver)
  fi
  export CHROME="$chrome"
  export CHROMEDRIVER="$chromedriver"
  "$CHROME" --version 2>/dev/null || true
  "$CHROMEDRIVER" --version
}
