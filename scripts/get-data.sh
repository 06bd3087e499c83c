#!/usr/bin/env bash
# Real data for the experiments (the tests never need it). Fashion-MNIST comes from Debian's
# dataset-fashion-mnist package (the four IDX files in /usr/share/datasets/fashion-mnist).
# Elsewhere: set MODSCOPE_DATA to a folder holding <name>/ with the standard files, or pass
# --data-root, or let torchvision download them on your machine (load_images(..., download=True)).
set -euo pipefail
if [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"
elif command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  echo "Fashion-MNIST: installed to /usr/share/datasets/fashion-mnist"
else
  echo "Fashion-MNIST: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or put the four" >&2
  echo "IDX files in \$MODSCOPE_DATA/fashion-mnist" >&2
  exit 1
fi
