#!/usr/bin/env bash
# Seals and unseals 1 GiB (generated, checked byte by byte, in a temporary file in /tmp)
# and prints the time and the peak RSS (VmHWM). Optimises repocrypt and the AES-GCM crates
# but reuses the dev build of everything else (a --release build is much longer).
set -euo pipefail
cd "$(dirname "$0")/.."
opt=()
for p in repocrypt aes aes-gcm ghash polyval ctr cipher aead universal-hash; do
  opt+=(--config "profile.dev.package.$p.opt-level=3")
done
exec cargo test -j2 "${opt[@]}" --lib seal::tests::one_gib -- --ignored --nocapture
