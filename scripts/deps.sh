#!/usr/bin/env bash
# Install the Debian 12 packages qvl needs to build (and, with --test, to test), when missing.
# Libraries are checked by package; tools by command, so a tool that came from elsewhere (for
# example Node.js with its own npm) is used as it is.
set -euo pipefail
pkgs="build-essential cmake pkg-config libcjson-dev libutf8proc-dev libpcre2-dev
      libjpeg62-turbo-dev libpng-dev libwebp-dev libexif-dev libmicrohttpd-dev
      libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libcurl4-openssl-dev"
tools=""
if [ "${1:-}" = "--test" ]; then
    pkgs="$pkgs libclang-rt-14-dev"
    tools="clang:clang ffmpeg:ffmpeg curl:curl node:nodejs npm:npm"
fi
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
for t in $tools; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing="$missing ${t#*:}"
done
if [ -n "$missing" ]; then
    echo "qvl: installing Debian packages:$missing" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
