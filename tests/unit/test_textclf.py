"""The lite analyzer's text classifier: its features, fitting it, the shipped weights, and the
calibration figures. (Quality is measured by bench/eval_unseen.py on a set no fitting code reads.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moderation.analyzers.textclf import TextClassifier, grams, hashed, normalise
from moderation.analyzers.textfit import Row, ece, fit, load_rows, save, split


class Bag:
    """A stand-in sentence encoder (the features test the n-gram half): a fixed random vector per word."""

    def encode(self, sentences: list[str]) -> np.ndarray:
        out = np.zeros((len(sentences), 384), dtype=np.float32)
        for i, s in enumerate(sentences):
            for w in s.split():
                out[i] += np.random.default_rng(abs(hash(w)) % (1 << 32)).normal(size=384).astype(np.float32)
            out[i] /= max(1e-6, float(np.linalg.norm(out[i])))
        return out


@pytest.mark.parametrize(
    ("text", "feature"),
    [
        ("k i l l   y o u r s e l f", "c:<kil"),  # letters spaced out: one word, read in pieces
        ("s3nd m0ney n0w", "w:send"),  # digits for letters
        ("SELL  Cocaine", "b:sell cocaine"),  # case, spacing, word pairs
        ("unaliving", "c:<unal"),  # pieces of words never seen whole
        ("出 售 冰 毒", "h:冰毒"),  # CJK split by OCR's spaces
        ("加我微信看福利", "h:微信看"),
        ("tap here 🍑🍆", "e:🍆"),
        ("claim at www.example-prize.top now", "x:url"),
    ],
)
def test_features_see_through_spelling(text: str, feature: str) -> None:
    assert feature in grams(normalise(text))


def test_hashed_features_are_stable_and_normalised() -> None:
    ids, values = hashed(normalise("the same words"), 20)
    ids2, _ = hashed(normalise("The  SAME words"), 20)
    assert (ids == ids2).all() and (ids < 1 << 20).all()
    assert np.isclose(float(np.linalg.norm(values)), 1.0)


def _toy() -> list[Row]:
    rows = []
    for i in range(40):
        rows.append(Row(f"buy cheap pills{i} delivered tonight no prescription", frozenset({"drugs"})))
        rows.append(Row(f"you worthless clown number {i} everyone laugh at him", frozenset({"harassment"})))
        rows.append(Row(f"my cat number {i} sleeps on the sofa all day", frozenset()))
        rows.append(Row(f"蛋糕 第{i}块 很好吃 周末 见", frozenset(), "zh"))
    return rows


def test_fit_save_load_score(tmp_path: Path) -> None:
    rows = _toy()
    rest, held = split(rows, 0.25)
    assert len(held) == 40 and not {r.text for r in held} & {r.text for r in rest}
    model = fit(rest, Bag(), ["drugs", "harassment"], bits=16, folds=3, maxiter=100)
    path = tmp_path / "clf.npz"
    save(model, path)
    clf = TextClassifier(Bag(), path)
    scores = clf.score_many(
        [
            "cheap pills delivered, no prescription needed",
            "everyone laugh at this worthless clown",
            "the cat sleeps",
            "",
        ]
    )
    assert scores[0]["drugs"] > 0.5 > scores[0]["harassment"]
    assert scores[1]["harassment"] > 0.5 > scores[1]["drugs"]
    assert max(scores[2].values()) < 0.5
    assert scores[3] == {}  # nothing to read
    assert len(clf.version) == 8  # the file's digest: the analyzer's version and cache key name it
    # The held-out split is scored as well as the fitted one, and the probabilities are calibrated.
    probs = np.array([[s["drugs"], s["harassment"]] for s in clf.score_many([r.text for r in held])])
    truth = np.array([["drugs" in r.labels, "harassment" in r.labels] for r in held], dtype=float)
    assert ((probs >= 0.5) == truth.astype(bool)).mean() > 0.95
    assert ece(probs.ravel(), truth.ravel())[0] < 0.15


def test_text_the_embedding_cannot_read_is_calibrated_on_its_own(tmp_path: Path) -> None:
    """Chinese text is scored on n-grams alone: its log-odds get their own calibration, fitted on
    the Chinese texts' out-of-fold predictions, and a file with one calibration still loads."""
    rows = _toy()
    for i in range(40):
        rows.append(Row(f"出售 冰毒 第{i}批 今晚 送货", frozenset({"drugs"}), "zh"))
    model = fit(rows, Bag(), ["drugs", "harassment"], bits=16, folds=3, maxiter=100)
    assert model.platt.shape == (2, 2, 2) and not np.allclose(model.platt[0], model.platt[1])
    path = tmp_path / "clf.npz"
    save(model, path)
    clf = TextClassifier(Bag(), path)
    zh = clf.score_many(["出售冰毒 今晚送货", "周末吃蛋糕"])
    assert zh[0]["drugs"] > 0.5 > zh[1]["drugs"]
    # Each text goes through its own group's calibration (softmax 1/3 each: log-odds -log 2).
    clf.platt = np.array([[[1.0, 0.0]] * 2, [[1.0, -2.0]] * 2])
    got = clf.calibrate(np.zeros((2, 3)), np.array([True, False]))
    assert np.allclose(got, [[1 / 3, 1 / 3], [1 / (1 + 2 * np.e**2)] * 2])
    # The single calibration of a file written before the split serves both kinds of text.
    old = dict(np.load(path))
    old["platt"] = old["platt"][0]
    np.savez(tmp_path / "old.npz", **old)
    legacy = TextClassifier(Bag(), tmp_path / "old.npz")
    assert legacy.platt.shape == (2, 2, 2) and np.allclose(legacy.platt[0], legacy.platt[1])


def test_ece_of_perfect_and_wrong_forecasts() -> None:
    y = np.array([0, 0, 1, 1], dtype=float)
    assert ece(y.copy(), y)[0] == 0.0
    assert ece(1 - y, y)[0] == pytest.approx(1.0)
    e, points = ece(np.full(4, 0.5), y)
    assert e == 0.0 and points == [(0.5, 0.5, 4)]


def test_load_rows_reads_both_formats_and_refuses_unknown_labels(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_text(
        "\n".join(
            json.dumps(x, ensure_ascii=False)
            for x in [
                {"text": "one", "labels": ["spam"]},
                {"text": "two", "label": "benign"},
                {"text": "ONE", "labels": []},  # the same text again: the first wins
                {"text": "三", "labels": []},
            ]
        ),
        encoding="utf-8",
    )
    rows = load_rows([tmp_path], ["spam"])
    assert [(r.text, set(r.labels), r.lang) for r in rows] == [
        ("one", {"spam"}, "en"),
        ("two", set(), "en"),
        ("三", set(), "zh"),
    ]
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x", "labels": ["nonsense"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="nonsense"):
        load_rows([tmp_path], ["spam"])


def test_shipped_weights_cover_the_taxonomy() -> None:
    from moderation.policy import TAXONOMY

    clf = TextClassifier()
    assert set(clf.categories) == set(TAXONOMY)
    assert clf.dense.shape == (384, len(clf.categories) + 1)
    out = clf.score_many(["see you at the park on sunday", "来吃饭吧"])
    assert all(0.0 <= p <= 1.0 for s in out for p in s.values()) and all(len(s) == len(TAXONOMY) for s in out)


def test_features_are_bounded_and_see_emoji_and_exclamations() -> None:
    from moderation.analyzers.textclf import MAX_CHARS

    # A caption of 10,000 characters (or one that NFKC expands, "㎉" -> "kcal") is read up to a
    # page: the work per text is bounded.
    for text in ("a" * 10_000, "㎉" * 10_000, "a1" * 5_000, "k i l l " * 2_000):
        assert len(grams(normalise(text))) <= 6 * MAX_CHARS
    assert "w:yourself" in grams(normalise("kill yourself!"))  # an exclamation is not leetspeak
    assert "w:kill" in grams(normalise("k!ll"))  # a "!" between letters is
    clf = TextClassifier()
    assert clf.score("💊❄️🍃") != {}  # emoji alone are read (and scored)
    assert clf.score("   ") == {} and clf.score("...") == {}


def test_minilm_encodes_each_segment_once_for_both_readers() -> None:
    """The classifier and the injection check read different subsets of the same segments: each
    sentence is encoded once, and a remembered one equals a fresh encoding."""
    from moderation.analyzers.embed import MiniLM

    model = MiniLM()
    seen: list[list[str]] = []
    encode = model._encode

    def counting(sentences: list[str]) -> np.ndarray:
        seen.append(list(sentences))
        return encode(sentences)

    model._encode = counting  # type: ignore[method-assign]
    first = model.encode(["meet me outside", "you will regret it"])
    second = model.encode(["you will regret it", "a new line"])
    assert seen == [["meet me outside", "you will regret it"], ["a new line"]]
    assert np.allclose(second[0], first[1])
    assert np.allclose(second[1], encode(["a new line"])[0], atol=1e-5)


NEIGHBOURS = [
    # The issue's kinds of harm in other words than its examples (none of these is in any set).
    ("held", "one more word out of you and I'll put you in the hospital"),
    ("held", "say that again and see what happens to your face"),
    ("held", "keep posting about me and you'll need a dentist"),
    ("held", "if I see you at the game on friday you're not walking home"),
    ("held", "everyone come look at this clown's haircut, drop your best roast below 😂"),
    ("held", "rate how ugly @jenna_k is from 1 to 10, I'll start: 2"),
    ("held", "再发一条我就让你躺着出去"),
    ("held", "大家快来看这个丑八怪，评论区一起笑"),  # noqa: RUF001
    # ...and harmless captions of the same shapes (pets, "one more ... and I ...").
    ("allowed", "my cat knocked the plant over again, what a menace"),
    ("allowed", "this dog has zero chill and I love him"),
    ("allowed", "one more episode and I'm going to bed, I promise"),
    ("allowed", "one more coffee and I'll be able to finish this report"),
    ("allowed", "我家猫又把杯子推下桌了，气死我了哈哈"),  # noqa: RUF001
    pytest.param(
        "allowed",
        "if you see my hamster escaping please tell him to come home",
        marks=pytest.mark.xfail(
            strict=True, reason="violence_gore 0.51, harassment 0.40 over their marks: a known false positive"
        ),
    ),
]


@pytest.mark.parametrize(("expected", "text"), NEIGHBOURS)
def test_neighbours_of_the_issues_examples(expected: str, text: str) -> None:
    from moderation.policy import load_policy
    from moderation.settings import data_dir

    policy = load_policy(data_dir("policies") / "default.yaml")
    scores = _shipped().score(text)
    held = sorted(c for c, p in scores.items() if p >= policy.categories[c].review_at)
    assert ("held" if held else "allowed") == expected, (held, scores)


_CLF: list[TextClassifier] = []


def _shipped() -> TextClassifier:
    if not _CLF:
        _CLF.append(TextClassifier())
    return _CLF[0]


# Everyday one-word and few-character lines: a handful of n-grams would decide them (the shipped
# weights once held "你好" as harassment at 0.98 and "lol" as self-harm), so the classifier leaves
# them to the rules; exact short terms of harm are the rules' and still held.
SHORT_HARMLESS = [
    "lol",
    "selfie",
    "hello",
    "mood",
    "你好",
    "您好",
    "你是谁",
    "想你了",
    "再见",
    "是的",
    "嗨",
    "在吗",
    "好看",
]
SHORT_HARMFUL = ["kys", "傻逼", "去死吧", "nmsl", "贱人", "约炮", "thinspo", "1488", "pthc"]


def test_one_word_or_a_few_characters_are_left_to_the_rules() -> None:
    from moderation.analyzers.lite import Lexicon, normalise
    from moderation.analyzers.textclf import judgeable
    from moderation.policy import load_policy
    from moderation.settings import data_dir

    policy = load_policy(data_dir("policies") / "default.yaml")
    assert _shipped().score_many(SHORT_HARMLESS) == [{}] * len(SHORT_HARMLESS)
    assert not judgeable("kys") and not judgeable("傻逼") and not judgeable("去死吧")
    lexicon = Lexicon()
    for text in SHORT_HARMLESS:
        assert lexicon.score(normalise(text))[0] == {}, text
    for text in SHORT_HARMFUL:
        scores = lexicon.score(normalise(text))[0]
        assert any(p >= policy.categories[c].review_at for c, p in scores.items()), (text, scores)
    # Two words, or four CJK characters, are judged.
    assert all(judgeable(t) for t in ["send nudes", "新年快乐", "kys now", "我会杀了你", "whitepower", "💊❄️🍃"])
    assert _shipped().score("whitepower")["hate"] >= policy.categories["hate"].review_at  # words run together
    assert lexicon.score(normalise("killyourself"))[0]["harassment"] >= 0.9
    assert _shipped().score("send nudes")["nudity"] >= policy.categories["nudity"].review_at  # asking for nudes


def _adapter(model: object, rank: int, seed: int) -> dict[str, np.ndarray]:
    """A random low-rank adapter in texttune.npz's layout (layer norms as the base model's)."""
    rng = np.random.default_rng(seed)
    sizes = {"query": (384, 384), "key": (384, 384), "value": (384, 384), "out": (384, 384)}
    sizes |= {"up": (1536, 384), "down": (384, 1536)}
    out: dict[str, np.ndarray] = {"rank": np.array(rank), "alpha": np.array(2.0 * rank)}
    for i, layer in enumerate(model.layers):  # type: ignore[attr-defined]
        for k, (o, n) in sizes.items():
            out[f"l{i}.{k}.A"] = rng.normal(0, 0.05, (rank, n)).astype(np.float16)
            out[f"l{i}.{k}.B"] = rng.normal(0, 0.05, (o, rank)).astype(np.float16)
        for k in ("ln1", "ln2"):
            out[f"l{i}.{k}.w"], out[f"l{i}.{k}.b"] = layer[k][0] * 1.1, layer[k][1] + 0.01
    return out


def test_tuned_minilm_equals_the_merged_weights_and_shares_the_base() -> None:
    """The adapter applied beside the weights (as shipped) gives what a model with the update
    merged into them gives; the base model is left as it was, and its arrays are not copied."""
    from moderation.analyzers.embed import MiniLM

    base = MiniLM()
    texts = ["one more word and you will regret it", "my cat sleeps all day"]
    before = base.encode(texts)
    adapter = _adapter(base, 4, 1)
    tuned = base.tuned(adapter)
    merged = MiniLM()
    names = {"query": 0, "key": 1, "value": 2}
    for i, layer in enumerate(merged.layers):

        def delta(k: str, i: int = i) -> np.ndarray:
            a, b = adapter[f"l{i}.{k}.A"].astype(np.float32), adapter[f"l{i}.{k}.B"].astype(np.float32)
            return (b @ a * 2.0).T  # (in, out), as the layer stores its weights

        for k, j in names.items():
            layer["wqkv"][:, j * 384 : (j + 1) * 384] += delta(k)
        layer["wo"] += delta("out")
        layer["wi"] += delta("up")
        layer["wo2"] += delta("down")
        layer["ln1"] = (adapter[f"l{i}.ln1.w"], adapter[f"l{i}.ln1.b"])
        layer["ln2"] = (adapter[f"l{i}.ln2.w"], adapter[f"l{i}.ln2.b"])
    got, want = tuned.encode(texts), merged._encode(texts)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - before).max() > 0.05  # the update changes the embedding
    assert np.array_equal(base.encode(texts), before) and np.array_equal(base._encode(texts), before)
    assert tuned.layers[0]["wqkv"] is base.layers[0]["wqkv"] and tuned.word is base.word


def test_shipped_classifier_averages_the_tuned_model_for_english_only() -> None:
    """The shipped classifier carries the tuned MiniLM (its digest in the version); Chinese text,
    which MiniLM cannot read, is scored by the n-gram model alone, also when English filler
    around it makes the line readable (the tuned model, trained on English, would outvote the
    n-grams that read the Chinese)."""
    from moderation.policy import load_policy
    from moderation.settings import data_dir

    policy = load_policy(data_dir("policies") / "default.yaml")
    clf = TextClassifier()
    assert clf.tuned is not None and "+" in clf.version
    english, chinese = "one more word out of you and I'll put you in the hospital", "再说一句我就打断你的腿"
    texts = [
        english,
        chinese,
        "lol " * 13 + chinese,
        "screenshot from the group chat today, what do you think? " + chinese,
        "translation below: " + chinese,
    ]
    both = clf.score_many(texts)
    tuned, clf.tuned = clf.tuned, None
    alone = clf.score_many(texts)
    assert both[1:] == alone[1:]
    assert both[0] != alone[0] and both[0]["violence_gore"] >= policy.categories["violence_gore"].review_at
    # One or two stray glyphs that OCR reads off a status bar do not bar the tuned model.
    stray = ["国13:40 I'm dead this is the funniest thing I've seen all week", "國3国 no smoking near the entrance"]
    clf.tuned = tuned
    voted = clf.score_many(stray)
    clf.tuned = None
    assert all(v != a for v, a in zip(voted, clf.score_many(stray), strict=True))
    clf.tuned = tuned
    clf.head_w = clf.head_w * np.float32(np.nan)  # a broken model fails the call (the stage fails closed)
    with pytest.raises(ValueError, match="not a number"):
        clf.score_many([english])


@pytest.mark.parametrize(
    "change",
    [
        {"l0.query.B": "inf"},
        {"head_w": "nan"},
        {"l3.up.A": "short"},
        {"platt": "short"},
        {"rank": 0},
        {"l5.ln2.w": None},
    ],
)
def test_a_broken_tuned_file_is_refused_when_loaded(tmp_path: Path, change: dict[str, object]) -> None:
    from moderation.analyzers.embed import MiniLM
    from moderation.analyzers.textclf import TUNED_NAME, WEIGHTS

    (tmp_path / "textclf.npz").write_bytes(WEIGHTS.read_bytes())
    arrays = dict(np.load(WEIGHTS.with_name(TUNED_NAME), allow_pickle=False))
    for name, how in change.items():
        if how is None:
            del arrays[name]
        elif how == "short":
            arrays[name] = arrays[name][:-1]
        elif isinstance(how, str):
            arrays[name] = np.full_like(arrays[name], float(how))
        else:
            arrays[name] = np.array(how)
    np.savez(tmp_path / TUNED_NAME, **arrays)
    with pytest.raises(ValueError):
        TextClassifier(MiniLM(), tmp_path / "textclf.npz")


def test_tuned_file_must_name_the_same_categories(tmp_path: Path) -> None:
    from moderation.analyzers.embed import MiniLM
    from moderation.analyzers.textclf import TUNED_NAME, WEIGHTS

    (tmp_path / "textclf.npz").write_bytes(WEIGHTS.read_bytes())
    shipped = dict(np.load(WEIGHTS.with_name(TUNED_NAME), allow_pickle=False))
    np.savez(tmp_path / TUNED_NAME, **{**shipped, "categories": np.array(["spam", "sexual"])})
    with pytest.raises(ValueError, match="categories"):
        TextClassifier(MiniLM(), tmp_path / "textclf.npz")
