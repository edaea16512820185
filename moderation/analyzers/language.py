"""Which text the lite analyzer can read: English and Chinese. Text in another language is not
judged as if it were harmless.

The rules and the text classifier were written and trained on English and Chinese. A threat in
Spanish or Russian scores near zero on both, and an analyzer that reported that with its usual
confidence would allow it. `LanguageCheck.unread` names the language (or script) of text the
analyzer does not read, so that the finding's confidence says so and the policy sends it on (to
the VLM, which reads many languages, or to a human).

Two cheap checks, no model:

- **script**: letters of a script other than Latin and Chinese (Cyrillic, Arabic, Devanagari,
  Hangul, Japanese kana, Thai, Greek, Hebrew…) making up a good share of the text;
- **Latin-script languages**: the function words and the letters of the widely used languages
  written in Latin letters (`policies/lite/languages.yaml`, data like the lexicon). Loanwords
  and names in English ("hasta la vista", "bon appétit", "déjà vu", "jalapeño") stay English.

On 460 meme and chat lines in 23 languages written by someone who never saw the lists, 93 % are
named unread; 2 of 240 English and Chinese look-alikes are (bench/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml

_LATIN_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
# Scripts read by unicodedata's names of letters; Latin and Chinese (CJK) are read.
_SCRIPT_NAMES = {
    "CYRILLIC": "Cyrillic script",
    "GREEK": "Greek script",
    "ARABIC": "Arabic script",
    "HEBREW": "Hebrew script",
    "DEVANAGARI": "Devanagari script",
    "BENGALI": "Bengali script",
    "GURMUKHI": "Gurmukhi script",
    "GUJARATI": "Gujarati script",
    "TAMIL": "Tamil script",
    "TELUGU": "Telugu script",
    "KANNADA": "Kannada script",
    "MALAYALAM": "Malayalam script",
    "THAI": "Thai script",
    "LAO": "Lao script",
    "KHMER": "Khmer script",
    "MYANMAR": "Myanmar script",
    "GEORGIAN": "Georgian script",
    "ARMENIAN": "Armenian script",
    "ETHIOPIC": "Ethiopic script",
    "HANGUL": "Korean (Hangul)",
    "HIRAGANA": "Japanese (kana)",
    "KATAKANA": "Japanese (kana)",
    "SINHALA": "Sinhala script",
}


def _script(ch: str) -> str:
    """LATIN, CJK or one of _SCRIPT_NAMES' keys for a letter; '' for anything else."""
    try:
        first = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return ""
    if first in ("LATIN", "CJK"):
        return first
    if first == "HALFWIDTH":  # halfwidth katakana / hangul
        return "KATAKANA" if "KATAKANA" in unicodedata.name(ch) else "HANGUL"
    return first if first in _SCRIPT_NAMES else ""


class LanguageCheck:
    """The check, with the word lists of one languages.yaml (its digest is `version`)."""

    def __init__(self, path: Path) -> None:
        """Raises OSError or ValueError when the file is unreadable or not of this shape; a folder
        without the file (one from before it) checks scripts alone (version "none")."""
        raw = path.read_bytes() if path.exists() else b"{english: '', languages: {}}"
        data: Any = yaml.safe_load(raw)
        if not isinstance(data, dict) or not isinstance(data.get("languages"), dict):
            raise ValueError(f"{path.name}: expected `english` and a mapping `languages`")
        self.version = hashlib.sha256(raw).hexdigest()[:8] if path.exists() else "none"
        self.english = set(str(data["english"]).split())
        shared = set(str(data.get("shared", "")).split())
        self.by_word: dict[str, set[str]] = {}
        self.letters: dict[str, str] = {}
        for lang, spec in dict(data["languages"]).items():
            for w in str(spec["words"]).split():
                if w not in self.english and w not in shared:
                    self.by_word.setdefault(w, set()).add(str(lang))
            if spec.get("letters"):
                self.letters[str(lang)] = str(spec["letters"])

    def unread(self, text: str, max_chars: int = 20_000) -> str | None:
        """The language, or script, of `text` when it is not English or Chinese; None when it is
        (or when there is too little text to tell: a stray glyph, a name, one word)."""
        text = unicodedata.normalize("NFC", text[:max_chars]).lower()
        counts: dict[str, int] = {}
        for ch in text:
            if ch.isalpha():
                script = _script(ch)
                counts[script] = counts.get(script, 0) + 1
        letters = sum(counts.values())
        other = {s: n for s, n in counts.items() if s in _SCRIPT_NAMES}
        if other:
            script, n = max(other.items(), key=lambda kv: kv[1])
            kana = counts.get("HIRAGANA", 0) + counts.get("KATAKANA", 0)
            if kana and script in ("HIRAGANA", "KATAKANA"):
                # Japanese writes kana between kanji; Chinese posts borrow a stray "の" (for 的).
                if kana >= 3 and kana >= 0.25 * (kana + counts.get("CJK", 0)):
                    return _SCRIPT_NAMES[script]
            elif n >= 3 and n >= letters / 3:
                return _SCRIPT_NAMES[script]
        words = _LATIN_WORD.findall(text)
        if len(words) < 2:
            return None
        hits: dict[str, int] = {}
        english = 0
        for w in words:
            if len(w) < 2:  # "u", "y", "a", "w": English chat, leetspeak fragments and half the alphabet
                continue
            if w in self.english:
                english += 1
            for lang in self.by_word.get(w, ()):
                hits[lang] = hits.get(lang, 0) + 1
        for lang, marks in self.letters.items():
            if any(ch in marks for ch in text):
                hits[lang] = hits.get(lang, 0) + 1
        if not hits:
            return None
        lang, n = max(hits.items(), key=lambda kv: kv[1])
        if n > english and ((n >= 2 and n >= 0.1 * len(words)) or (len(words) <= 3 and english == 0)):
            # (Two or three words with no English among them: one of a language's words is enough.)
            return lang
        return None
