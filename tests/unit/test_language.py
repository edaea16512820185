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
        ("x" * 5000 + " я тебя найду", None),  # a line among much else: the analyzer checks each line too
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
