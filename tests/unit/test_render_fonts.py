"""bench/render_texts.py draws from a pinned list of faces, so `make eval` renders the same images
on every machine, whatever other fonts are installed (Chromium's packages add some)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench import render_texts


def _fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skip: str = "") -> Path:
    real = Path("/usr/share/fonts/truetype")
    for name in [*render_texts.LATIN_FONTS, *render_texts.CJK_FONTS]:
        if name == skip:
            continue
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(real / name)
    monkeypatch.setattr(render_texts, "FONT_ROOT", tmp_path)
    return tmp_path


def test_other_installed_fonts_are_not_drawn_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_root(tmp_path, monkeypatch)
    for extra in ("noto/NotoSans-Regular.ttf", "noto/NotoSansCJK-Regular.ttc", "liberation/LiberationSans-Regular.ttf"):
        (root / extra).parent.mkdir(parents=True, exist_ok=True)
        (root / extra).write_bytes(b"not a font")
    latin, cjk = render_texts.fonts(False), render_texts.fonts(True)
    assert [Path(f).relative_to(root).as_posix() for f in latin] == list(render_texts.LATIN_FONTS)
    assert [Path(f).relative_to(root).as_posix() for f in cjk] == list(render_texts.CJK_FONTS)
    # The same seed draws the same image.
    one = render_texts.render("one more word and you're done", "en", random.Random(7))
    two = render_texts.render("one more word and you're done", "en", random.Random(7))
    assert one.tobytes() == two.tobytes()


@pytest.mark.parametrize("missing", ["wqy/wqy-microhei.ttc", "liberation2/LiberationMono-Italic.ttf"])
def test_a_missing_face_stops_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    _fake_root(tmp_path, monkeypatch, skip=missing)
    with pytest.raises(SystemExit, match=r"fonts missing .*" + missing.split("/")[1].replace(".", r"\.")):
        render_texts.fonts(missing.startswith("wqy"))
