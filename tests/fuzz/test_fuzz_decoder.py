"""Fuzzing the intake decoder: `inspect_image` on hostile bytes returns facts or refuses them with
a 4xx code (or SERVICE_UNAVAILABLE from the decode budget, never reached here: one thread), and
never raises anything else; each input takes < ITEM_SECONDS and raises the process's peak RSS by
at most the configured decode limit plus ITEM_SLACK.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given

from moderation.errors import CATALOGUE, ModerationError
from moderation.intake.images import DecodeBudget, ImageInfo, Limits, inspect_image
from moderation.settings import Settings
from tests.fuzz import strategies
from tests.fuzz.known import pillow_struct_error, regression, skip_known
from tests.fuzz.meter import MIB, Meter, replay_is_flat

# What a refused image may be answered with (issue 10: "only 4xx or a decision").
REFUSALS = {code for code, (status, _) in CATALOGUE.items() if status in (413, 415, 422)}
ITEM_SLACK = 128 * MIB  # the thumbnail, the hashes' working copies and the interpreter's own churn


def production_limits() -> Limits:
    """The shipped defaults (Settings' own, whatever this process's environment says)."""
    fields = {name: f.default for name, f in Settings.model_fields.items()}
    return Limits(
        max_bytes=fields["max_upload_bytes"],
        max_pixels=fields["max_pixels"],
        max_frames=fields["max_frames"],
        max_total_pixels=fields["max_total_pixels"],
        hash_side=fields["hash_side"],
        max_decode_bytes=fields["max_decode_bytes"],
        budget=DecodeBudget(fields["decode_memory_budget"], fields["decode_wait_s"]),
    )


LIMITS = production_limits()


@pytest.fixture(scope="module")
def meter() -> Iterator[Meter]:
    m = Meter("decoder", item_rss_bound=LIMITS.max_decode_bytes + ITEM_SLACK, retained_rss_bound=None)
    yield m
    m.finish()


# A sample of what the suite decoded, replayed at the end to tell a leak from the allocator's
# and Hypothesis' own growth (`replay_is_flat`).
REPLAY: list[bytes] = []
REPLAY_MAX = 400


def check(data: bytes, meter: Meter) -> Any:
    """One input through the decoder under the contract; returns the outcome's label."""
    skip_known(pillow_struct_error(data))
    if len(REPLAY) < REPLAY_MAX:
        REPLAY.append(data[: 1 << 20])
    with meter.item(f"({len(data)} bytes, starting {data[:16]!r})"):
        try:
            info, thumb = inspect_image(data, LIMITS)
        except ModerationError as exc:
            assert exc.code in REFUSALS, f"refused with {exc.code} ({exc.http_status}): {exc.message}"
            label = exc.code
        else:
            assert isinstance(info, ImageInfo)
            assert info.width > 0 and info.height > 0 and info.width * info.height <= LIMITS.max_pixels
            assert 1 <= info.frames <= LIMITS.max_frames
            assert info.byte_size == len(data) and len(info.sha256) == 64 and len(info.pdq) == 64
            assert thumb.mode == "RGB" and max(thumb.size) <= 4 * LIMITS.hash_side
            label = f"ok:{info.format}"
    meter.outcome(label)
    return label


def test_every_seed_is_accepted(meter: Meter) -> None:
    """The strategies start from valid images: each one decodes (so mutations start from an accept)."""
    for name, data in strategies.seeds().items():
        assert check(data, meter).startswith("ok:"), name


@given(data=strategies.hostile_image)
@example(data=b"\xff\xd8" + b"\x00" * (LIMITS.max_bytes + 1 - 2))  # over the byte cap: 413
# Found by the upload suite (known.pillow_struct_error): an animated GIF cut right after the
# next frame's image separator raised struct.error from Pillow's `is_animated`: a 500.
@example(data=regression("decoder-gif-truncated-descriptor.gif"))
def test_hostile_images_get_a_decision_or_a_4xx(data: bytes, meter: Meter) -> None:
    check(data, meter)


@given(data=strategies.mutated_image())
def test_header_rewrites_of_every_format(data: bytes, meter: Meter) -> None:
    """The mutations alone (most examples get past the signature into a decoder)."""
    check(data, meter)


def test_replaying_the_inputs_grows_no_memory() -> None:
    """The inputs above, decoded three more times: after the first pass (allocator warm-up) RSS
    stays flat, so nothing is kept per decode."""
    replay_is_flat(REPLAY, lambda data: inspect_image(data, LIMITS))
