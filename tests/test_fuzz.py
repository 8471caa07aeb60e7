"""Fuzzing the image-loading and preprocessing path with Hypothesis (harness: tests/corpus/fuzzing.py).

Property: random and mutated JPEG/PNG/GIF/WebP/BMP/TIFF bytes, read from a file, from BytesIO and with
reduced-scale JPEG decoding, give either a finite float32 (3, 32, 32) tensor from
ClassificationPreset(crop_size=32, resize_size=36) or a BadImageError naming the input; never another
exception, never disagreement between the routes, never more than the per-input time bound. The default
run is bounded (200 examples, derandomized); the `slow` one explores more. bench/fuzz.py runs it for a
wall-clock budget.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus.fuzzing import (  # noqa: E402
    INTERESTING,
    INTERESTING_WIDE,
    MAGICS,
    SEEDS,
    Plan,
    build_checker,
    minimize,
    random_plan,
)

TIME_BOUND_S = 5.0
# Pillow warns about each corrupt EXIF/TIFF tag it skips; that is expected on mutated input.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

_pos = st.one_of(st.integers(0, 63), st.integers(0, 1 << 16))  # headers sit in the first bytes
_op = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(0, 7)),
    st.tuples(st.just("set"), _pos, st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255))),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.sampled_from(("delete", "dup")), _pos, st.sampled_from((1, 2, 4, 16, 256))),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=16).map(tuple)),
    st.tuples(st.sampled_from(("u16", "u32")), _pos, st.sampled_from(INTERESTING_WIDE), st.booleans()),
    st.tuples(st.just("splice"), _pos, st.sampled_from(sorted(SEEDS)), st.integers(0, 1 << 16)),
)
PLANS = st.one_of(
    st.builds(
        Plan,
        seed=st.sampled_from(sorted(SEEDS)),
        ops=st.lists(_op, min_size=1, max_size=8).map(tuple),
        fix_crc=st.booleans(),
    ),
    st.builds(
        Plan, seed=st.sampled_from([f"random:{m}" for m in sorted(MAGICS)]), body=st.binary(max_size=2048)
    ),
)


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory):
    return build_checker(tmp_path_factory.mktemp("fuzz"), time_bound=TIME_BOUND_S)


def _assert_holds(check, plan: Plan) -> None:
    data = plan.render()
    res = check(data, plan.ext)
    assert res.finding is None, f"{res.finding}\nplan: {plan!r}\ninput ({len(data)} bytes): {data[:300]!r}"


def test_every_seed_decodes(check) -> None:
    """The fuzz seeds themselves are valid images of every supported format (else mutations prove little)."""
    for name, data in SEEDS.items():
        res = check(data, Plan(seed=name).ext)
        assert res.outcome == "ok", (name, res.detail)


def test_harness_catches_exceptions_timeouts_and_bad_tensors(tmp_path: Path, monkeypatch) -> None:
    """The property can fail: a stray exception, a hang and a NaN tensor are each reported."""
    import torch

    import synapse7.transforms as T

    png = SEEDS["png"]
    monkeypatch.setattr(T.ClassificationPreset, "__call__", lambda self, img: 1 / 0)
    assert build_checker(tmp_path)(png, ".png").finding.kind == "ZeroDivisionError"
    monkeypatch.setattr(
        T.ClassificationPreset, "__call__", lambda self, img: torch.full((3, 32, 32), float("nan"))
    )
    assert build_checker(tmp_path)(png, ".png").finding.kind == "bad-tensor"
    monkeypatch.setattr(T.ClassificationPreset, "__call__", lambda self, img: time.sleep(5))
    t0 = time.perf_counter()
    assert build_checker(tmp_path, time_bound=0.3)(png, ".png").finding.kind == "timeout"
    assert time.perf_counter() - t0 < 3


def test_minimize_shrinks_while_the_failure_persists() -> None:
    data = bytes(range(200))
    small = minimize(data, lambda d: b"\x41\x42" in d, budget_s=5)
    assert small == b"\x41\x42"


def test_random_plans_render_deterministically() -> None:
    import random

    a = [random_plan(random.Random(3)).render() for _ in range(2)]
    assert a[0] == a[1]


@pytest.mark.timeout(300)
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(plan=PLANS)
def test_fuzz_loading_and_preprocessing(check, plan: Plan) -> None:
    _assert_holds(check, plan)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@settings(
    max_examples=5000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(plan=PLANS)
def test_fuzz_loading_and_preprocessing_long(check, plan: Plan) -> None:
    _assert_holds(check, plan)
