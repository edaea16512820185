"""The lite analyzer's check for text it cannot read (moderation/analyzers/language.py), on a set
written by a helper who never saw the code: 460 meme and chat lines in 23 languages (threats,
insults, drug sales, scams and everyday talk) and 240 English and Chinese lines that a naive
check might take for foreign (loanwords, names, dialect, leetspeak, pinyin)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from moderation.analyzers.language import LanguageCheck
from moderation.settings import data_dir

DATA = Path(__file__).resolve().parents[1] / "data"
ROWS = [json.loads(line) for line in (DATA / "lang_unread" / "texts.jsonl").read_text("utf-8").splitlines()]
NON_LATIN = {"ar", "el", "he", "ja", "ko", "ru", "th", "uk"}
unread_language = LanguageCheck(data_dir("policies") / "lite" / "languages.yaml").unread


def test_text_in_other_languages_is_named_unread() -> None:
    caught, total = Counter[str](), Counter[str]()
    for row in ROWS:
        if row["expect"] == "unread":
            total[row["lang"]] += 1
            caught[row["lang"]] += unread_language(row["text"]) is not None
    assert len(total) == 23
    assert sum(caught.values()) >= 0.88 * sum(total.values()), caught  # 428/460 on 2026-12-03
    for lang in NON_LATIN:  # another script is told by its letters alone
        assert caught[lang] == total[lang], lang
    for lang, n in total.items():  # no language slips through wholesale
        assert caught[lang] >= 0.6 * n, (lang, caught[lang], n)


def test_english_and_chinese_stay_read() -> None:
    read = [r for r in ROWS if r["expect"] == "read"]
    wrong = [(r["text"], unread_language(r["text"])) for r in read if unread_language(r["text"]) is not None]
    assert len(wrong) <= 0.02 * len(read), wrong  # 2/240: "Ich bin ein Berliner speech turns 60"
    assert all(unread_language(r["text"]) is None for r in read if r["lang"] == "zh")


def test_the_evaluation_sets_english_and_chinese_are_read() -> None:
    texts = [
        json.loads(line)["text"]
        for f in sorted(DATA.glob("eval_unseen*/texts.jsonl"))
        for line in f.read_text("utf-8").splitlines()
    ]
    flagged = [t for t in texts if unread_language(t) is not None]
    assert len(texts) > 1500 and len(flagged) <= 0.005 * len(texts), flagged


def test_english_filler_does_not_outvote_a_foreign_sentence() -> None:
    unread = [r["text"] for r in ROWS if r["expect"] == "unread"]
    after = sum(
        unread_language(t + " lol you know what i mean, that is all i have to say for now") is not None for t in unread
    )
    before = sum(unread_language("ok so this is what my cousin sent me, look: " + t) is not None for t in unread)
    assert after >= 0.7 * len(unread) and before >= 0.7 * len(unread), (after, before)  # 345, 378 of 460


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _bold(text: str) -> str:  # MATHEMATICAL BOLD SMALL letters
    return "".join(chr(0x1D41A + ord(c) - ord("a")) if "a" <= c <= "z" else c for c in text)


@pytest.mark.parametrize(
    "text",
    [
        _fullwidth("vendo coca, te lo llevo a tu casa"),
        _bold("te voy a matar"),
        "te v\u034foy a m\u034fatar",  # an invisible joiner inside words
        "te\u200b voy\u200d a matar",  # zero-width characters
        "貴様を殺す",  # Japanese with two kana
        "\u0f44\u0f0b\u0f41\u0fb1\u0f7a\u0f51\u0f0b\u0f62\u0f44\u0f0b",  # Tibetan: any script but Latin and Chinese
    ],
)
def test_disguised_or_rarer_text_is_still_named(text: str) -> None:
    assert unread_language(text) is not None


@pytest.mark.parametrize(
    "text", ["Oi mate", "Ya ya ya", "Ok ciao", "bon appétit", "Las Vegas Raiders", "你好 ni hao", "干杯 gan bei 🍻"]
)
def test_short_english_with_a_borrowed_word_stays_read(text: str) -> None:
    assert unread_language(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("lol", None),
        ("ok 👍", None),
        ("国13:40", None),  # OCR's stray glyphs
        ("我の天哪 笑死", None),  # a Chinese post borrowing の
        ("u r so dead 2nite", None),  # English chat: one-letter words count for nobody
        ("y0u w1ll b3 d34d", None),
        ("la la land", None),
        ("お前を殺す", "Japanese (kana)"),
        ("죽여버릴거야", "Korean (Hangul)"),
        ("я тебя найду", "Cyrillic script"),
        ("سأقتلك", "Arabic script"),
        ("x" * 5000 + " я тебя найду", "Cyrillic script"),  # six letters of another script, whatever surrounds them
        ("lol (╯°Д°)╯ so mad rn", None),  # a kaomoji's letter is not Russian
        ("x" * 25_000 + " я тебя найду я тебя найду", None),  # bounded work: the first 20,000 characters
    ],
)
def test_edges(text: str, expected: str | None) -> None:
    assert unread_language(text) == expected


def test_a_folder_without_the_lists_checks_scripts_alone_and_a_broken_file_is_refused(tmp_path: Path) -> None:
    bare = LanguageCheck(tmp_path / "languages.yaml")
    assert bare.version == "none" and bare.unread("я тебя найду") == "Cyrillic script"
    assert bare.unread("te voy a encontrar") is None
    (tmp_path / "languages.yaml").write_text("- just\n- a list\n", "utf-8")
    with pytest.raises(ValueError, match="languages"):
        LanguageCheck(tmp_path / "languages.yaml")
