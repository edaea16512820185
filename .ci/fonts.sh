#!/usr/bin/env bash
# The Chinese font (fonts-wqy-zenhei) that the synthetic memes and the CJK OCR tests render with, and
# a few more faces for the variety of bench/render_texts.py.
set -u
if fc-list :lang=zh 2>/dev/null | grep -q . || [ -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei fonts-wqy-microhei fonts-dejavu-core fonts-dejavu-extra fonts-liberation2) >/dev/null 2>&1
fi
[ -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || { echo "could not install fonts-wqy-zenhei" >&2; exit 1; }
