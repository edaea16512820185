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
named unread (75 % inside English filler); 3 of 240 English and Chinese look-alikes are
(bench/RESULTS.md). Text of content words alone ("vendo perico, dm") is not named.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml

_LATIN_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
WINDOW = 6  # words: a foreign phrase is judged on its own, not outvoted by English filler around it
_READ = {"LATIN", "CJK", "BOPOMOFO", "MODIFIER", "COMBINING", "IDEOGRAPHIC"}  # letters that are not another script
_KANA = {"HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"}


def _script(ch: str) -> str:
    """The script of a letter, by the first word of its Unicode name: LATIN, CJK (read), or
    another (CYRILLIC, ARABIC, HANGUL, HIRAGANA, TIBETAN, …); '' for a letter without a name."""
    try:
        first = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return ""
    if first == "HALFWIDTH":  # halfwidth katakana / hangul
        return "KATAKANA" if "KATAKANA" in unicodedata.name(ch) else "HANGUL"
    return "" if first in _READ else first


def _clean(text: str) -> str:
    """NFKC (full-width and mathematical letters become plain ones), lower case, without invisible
    format characters (which would split words) and without combining marks left over once
    accents are composed ("t\u0301e\u0301" reads "té"; "está" stays "está")."""
    text = "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if unicodedata.category(ch) != "Cf")
    return "".join(ch for ch in unicodedata.normalize("NFC", text) if unicodedata.category(ch) not in ("Mn", "Me"))


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
        self.english = set(_clean(str(data["english"])).split())
        shared = set(_clean(str(data.get("shared", ""))).split())
        self.by_word: dict[str, set[str]] = {}
        self.letters: dict[str, str] = {}
        for lang, spec in dict(data["languages"]).items():
            for w in _clean(str(spec["words"])).split():
                if w not in self.english and w not in shared:
                    self.by_word.setdefault(w, set()).add(str(lang))
            if spec.get("letters"):
                self.letters[str(lang)] = str(spec["letters"])

    def unread(self, text: str, max_chars: int = 20_000) -> str | None:
        """The language, or script, of `text` when it is not English or Chinese; None when it is
        (or when there is too little text to tell: a stray glyph, a name, one word)."""
        raw = unicodedata.normalize("NFKC", text[:max_chars]).lower()
        counts: dict[str, int] = {}
        for ch in raw:
            if ch.isalpha():
                script = _script(ch)
                counts[script] = counts.get(script, 0) + 1
        kana = sum(counts.pop(k, 0) for k in _KANA)
        # Japanese writes kana between kanji ("貴様を殺す"); Chinese posts borrow one "の" (for 的).
        if kana >= 2 and kana >= 0.25 * (kana + len(_CJK_CHAR.findall(raw))):
            return "Japanese (kana)"
        other = {s: n for s, n in counts.items() if s}
        if other:
            script, n = max(other.items(), key=lambda kv: kv[1])
            # Six letters are a word or two, whatever English surrounds them (a kaomoji's "Д" is one).
            if n >= 6 or (n >= 3 and n >= sum(counts.values()) / 3):
                return "Korean (Hangul)" if script == "HANGUL" else f"{script.title()} script"
        words = _LATIN_WORD.findall(_clean(text[:max_chars]))
        if len(words) < 2:
            return None
        if len(words) <= 3 and _CJK_CHAR.search(raw):
            return None  # pinyin beside Chinese ("干杯 gan bei")
        # The whole text, then windows of it: English filler around a foreign sentence does not
        # outvote it.
        windows = [words] + [words[i : i + WINDOW] for i in range(0, len(words) - WINDOW // 2, WINDOW // 2)]
        for i, window in enumerate(windows):
            # (In windows and in two or three words, a word counts once: "ya ya ya" is one word.)
            lang = self._vote(window if i == 0 and len(words) > 3 else list(set(window)), raw, 0.1 if i == 0 else 0.0)
            if lang is not None:
                return lang
        return None

    def _vote(self, words: list[str], raw: str, share: float) -> str | None:
        """A language whose words (a letter only it uses counts as one) outnumber the English ones
        in `words`: at least two (and `share` of them), or one in two or three words with no English."""
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
            if any(ch in marks for ch in raw):
                hits[lang] = hits.get(lang, 0) + 1
        if not hits:
            return None
        lang, n = max(hits.items(), key=lambda kv: kv[1])
        if n > english and ((n >= 2 and n >= share * len(words)) or (len(words) <= 3 and english == 0)):
            return lang
        return None
