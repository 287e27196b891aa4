#!/bin/sh
# Build the root filesystem of evolver's base sandbox image from Debian packages, with no container registry:
#   build-rootfs.sh ROOTFS_DIR [MIRROR]
# Then evolver packs ROOTFS_DIR with `docker import` (see evolver/sandbox/images.py). Needs root and
# debootstrap. Everything the image holds is listed in packages.txt; changing this folder changes the tag.
set -eu
rootfs="$1"
mirror="${2:-http://deb.debian.org/debian}"
suite="$(cat "$(dirname "$0")/suite.txt")"
packages="$(grep -v '^#' "$(dirname "$0")/packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror"
# What a sandbox never needs: package caches, docs, man pages, locales. Keeps the image near 130 MB.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
       "$rootfs"/var/log/* "$rootfs"/tmp/* 2>/dev/null || true
# Mount points the sandbox container uses (the root filesystem itself is mounted read-only).
mkdir -p "$rootfs/opt/evolver" "$rootfs/sandbox"
chmod 0755 "$rootfs/opt/evolver" "$rootfs/sandbox"
# Byte-compile the standard library and pytest once: sandbox processes run with -B and never write .pyc.
chroot "$rootfs" python3 -m compileall -q -j 0 /usr/lib/python3 /usr/lib/python3.11 >/dev/null 2>&1 || true
