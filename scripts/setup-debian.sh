#!/usr/bin/env bash
# Installs everything ckpt needs on Debian 12, as root (or through sudo). Idempotent.
# Build: cmake, a C compiler (and clang, for the second -Werror build of scripts/test.sh),
# pkg-config and the libraries libckpt links.
# Tests, benchmarks and the demo only: Debian's PyTorch 1.13, torchvision, Pillow, numpy,
# scikit-learn (its handwritten digits train the demo's model), strace, GNU time.
# GNU parallel and Slurm (slurmctld, slurmd, sbatch): tests only, the scale-out of --shard.
set -euo pipefail
packages=(
  build-essential clang cmake pkg-config
  zlib1g-dev nettle-dev libjansson-dev libjpeg62-turbo-dev libpng-dev libdnnl-dev
  python3-torch python3-torchvision python3-pil python3-numpy python3-sklearn
  strace time
  parallel slurmctld slurmd slurm-client
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
