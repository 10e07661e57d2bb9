#!/usr/bin/env bash
# Install the Debian 12 packages qvl needs to build and test, when they are missing.
set -euo pipefail
pkgs="build-essential cmake pkg-config libcjson-dev libutf8proc-dev libpcre2-dev
      libjpeg62-turbo-dev libpng-dev libwebp-dev libmicrohttpd-dev
      libavformat-dev libavcodec-dev libswscale-dev libavutil-dev"
if [ "${1:-}" = "--test" ]; then
    pkgs="$pkgs clang libclang-rt-14-dev ffmpeg nodejs npm curl"
fi
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "qvl: installing Debian packages:$missing" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
