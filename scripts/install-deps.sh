#!/usr/bin/env bash
# Installs the system packages minisora builds against (Debian 12 / Ubuntu 22.04+):
# FFmpeg's development libraries (ffmpeg-next binds libavcodec & co.) and clang
# (bindgen generates those bindings). Installs only what is missing; uses sudo
# when not run as root.
set -euo pipefail
packages=(libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev
          libavdevice-dev libswresample-dev clang libclang-dev pkg-config)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
