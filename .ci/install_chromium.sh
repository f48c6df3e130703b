#!/usr/bin/env bash
# Install headless Chromium and its WebDriver from Debian for tests/test_leaderboard_browser.py.
# Never fails the CI job: without a browser that test skips with its reason.
set -u

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium and chromedriver already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "warning: not root and no sudo; skipping the Chromium install" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null; then
    echo "installed: $(chromium --version 2>/dev/null | head -n 1)"
else
    echo "warning: could not install chromium/chromium-driver; the browser test will skip" >&2
fi
exit 0
