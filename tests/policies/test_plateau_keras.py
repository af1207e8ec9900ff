"""plateau@1 flavor "keras" against the real keras.callbacks.ReduceLROnPlateau (torch backend).

Keras keeps the learning rate in a float32 variable; the policy's lr must be that float32 value
as a Python float, after every evaluation, compared with ``==`` and by bits. The callback's
best, wait and cooldown_counter must match the policy's state, and the action is "reduce"
exactly when keras reduced (keras can "reduce" a float32 lr to itself, e.g. a subnormal).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

os.environ["KERAS_BACKEND"] = "torch"

import keras
import pytest

from lrpilot.policies import Observation, get_policy
from tests.streams import Stream, make_stream

N_STREAMS = 150
NAN, INF = math.nan, math.inf

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "torch", reason="keras was imported with another backend"
    ),
    # keras' torch backend converts the lr variable with np.array(x): noise, not our concern
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


@pytest.fixture(scope="module")
def model() -> Any:
    m = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    return m


def keras_lr(model: Any) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def replay_against_keras(model: Any, stream: Stream) -> list[float]:
    policy = get_policy("plateau", 1)
    params = policy.resolve(stream.params, stream.base_lrs)
    state = policy.init(params, stream.base_lrs)
    (base_lr,) = stream.base_lrs
    model.optimizer.learning_rate = base_lr
    kw = stream.reference_kwargs()
    kw["mode"] = kw.get("mode", "min")  # keras' default is "auto"; ours is "min"
    cb = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", verbose=0, **kw)
    cb.set_model(model)
    cb.on_train_begin()
    reduced: list[bool] = []
    real_reduce = cb._reduce_optimizer_lr

    def spy(*args: Any, **kwargs: Any) -> bool:
        did = real_reduce(*args, **kwargs)
        reduced.append(did)
        return did

    cb._reduce_optimizer_lr = spy
    assert state.lrs == (keras_lr(model),)
    seen: list[float] = []
    for i, (step, value) in enumerate(zip(stream.steps, stream.values, strict=True)):
        reduced.clear()
        was_cooling = cb.cooldown_counter > 0
        cb.on_epoch_end(i, {"val_loss": value})
        expected = keras_lr(model)
        outcome, state = policy.step(params, state, Observation(step, value, "val_loss"))
        where = f"{stream.describe()}\n  mismatch at index {i} (value {value!r})"
        assert outcome.lrs == (expected,), f"{where}: lr {outcome.lrs!r} != keras {expected!r}"
        assert bits(outcome.lrs[0]) == bits(expected), where
        assert f32(outcome.lrs[0]) == outcome.lrs[0] or math.isnan(outcome.lrs[0]), where
        assert state.lrs == outcome.lrs, where
        want = "reduce" if any(reduced) else ("cooldown" if was_cooling else "hold")
        assert outcome.action == want, f"{where}: action {outcome.action!r} != {want!r}"
        assert repr(state.best) == repr(cb.best), f"{where}: best {state.best!r} != {cb.best!r}"
        assert state.bad_evaluations == cb.wait, (
            f"{where}: wait {state.bad_evaluations} != keras {cb.wait}"
        )
        assert state.cooldown_counter == cb.cooldown_counter, (
            f"{where}: cooldown {state.cooldown_counter} != keras {cb.cooldown_counter}"
        )
        assert outcome.reason, where
        seen.append(outcome.lrs[0])
    return seen


@pytest.mark.parametrize("seed", range(N_STREAMS))
def test_random_stream_matches_keras(model: Any, seed: int) -> None:
    replay_against_keras(model, make_stream(seed, "keras"))


def run(model: Any, params: dict[str, Any], base_lr: float, values: list[float]) -> list[float]:
    stream = Stream(
        seed=-1,
        flavor="keras",
        params={"flavor": "keras", **params},
        base_lrs=(base_lr,),
        values=tuple(values),
        steps=tuple(range(len(values))),
    )
    return replay_against_keras(model, stream)


# Hand-written cases: literal expectations for NaN, infinities and float32 rounding
# (checked against keras as well).


def test_nan_as_first_evaluation_becomes_best_and_nothing_improves(model: Any) -> None:
    lrs = run(model, {"patience": 1, "factor": 0.5}, 0.5, [NAN, 1.0, 0.0, -INF])
    assert lrs == [0.5, 0.25, 0.125, 0.0625]


def test_nan_after_first_never_improves(model: Any) -> None:
    lrs = run(model, {"patience": 2, "factor": 0.5}, 0.5, [1.0, NAN, NAN, 0.5, NAN])
    assert lrs == [0.5, 0.5, 0.25, 0.25, 0.25]


def test_minus_inf_first_in_min_mode_sticks(model: Any) -> None:
    lrs = run(model, {"patience": 1, "factor": 0.5}, 0.5, [-INF, -INF, -1e300])
    assert lrs == [0.5, 0.25, 0.125]


def test_values_beyond_float32_compare_as_infinity(model: Any) -> None:
    # float32(-1e300 + min_delta) is -inf, and -inf < float32(-3.5e38) = -inf is False.
    lrs = run(model, {"patience": 0, "factor": 0.5}, 0.5, [-3.5e38, -1e300])
    assert lrs == [0.5, 0.25]


def test_double_difference_invisible_in_float32_is_no_improvement(model: Any) -> None:
    lrs = run(
        model,
        {"patience": 0, "factor": 0.5, "min_delta": 0.0},
        0.5,
        [0.1, math.nextafter(0.1, -INF)],
    )
    assert lrs == [0.5, 0.25]


def test_learning_rate_is_float32(model: Any) -> None:
    lrs = run(model, {"patience": 0, "factor": 0.1}, 0.1, [1.0, 1.0])
    assert lrs == [f32(0.1), f32(f32(0.1) * 0.1)]


def test_min_lr_compared_in_float32(model: Any) -> None:
    # once at float32(min_lr) keras stops reducing, and wait keeps growing
    lrs = run(model, {"patience": 0, "factor": 0.1, "min_lr": 1e-3}, 3e-3, [1.0] * 4)
    assert lrs == [f32(3e-3), f32(1e-3), f32(1e-3), f32(1e-3)]


def test_keras_defaults_mode_is_min(model: Any) -> None:
    policy = get_policy("plateau", 1)
    assert policy.resolve({"flavor": "keras"}, (0.1,)).mode == "min"


def test_float32_subnormal_floor_keras_reduces_to_the_same_value(model: Any) -> None:
    # 0.7 * (smallest float32 subnormal) rounds back to it: keras still "reduces" (and resets
    # wait, starts the cooldown) every time, although the lr no longer moves.
    lrs = run(model, {"patience": 0, "factor": 0.7, "min_delta": 0.0}, 0.1, [1.0] * 400)
    tiny = float(struct.unpack("<f", struct.pack("<i", 1))[0])
    assert lrs[-1] == lrs[-2] == tiny
