#!/usr/bin/env bash
# The Chinese font (fonts-wqy-zenhei) that the synthetic memes and the CJK OCR tests render with, and
# a few more faces for the variety of bench/render_texts.py.
set -u
# bench/render_texts.py draws from a pinned list of these faces: one file of each package says it is there.
T=/usr/share/fonts/truetype
have() { [ -f $T/wqy/wqy-zenhei.ttc ] && [ -f $T/wqy/wqy-microhei.ttc ] && [ -f $T/dejavu/DejaVuSans.ttf ] \
  && [ -f $T/dejavu/DejaVuSerifCondensed.ttf ] && [ -f $T/liberation2/LiberationSans-Regular.ttf ]; }
if have; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei fonts-wqy-microhei fonts-dejavu-core fonts-dejavu-extra fonts-liberation2) >/dev/null 2>&1
fi
have || { echo "could not install the fonts (fonts-wqy-zenhei, fonts-wqy-microhei, fonts-dejavu-*, fonts-liberation2)" >&2; exit 1; }
