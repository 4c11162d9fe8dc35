"""Property-based checks of the Python API's input handling (hypothesis): any input either works or
gets a ValueError/TypeError that says what was expected, never a deep TF error, a NaN or a wrong shape."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kerasae

MODELS = {name: kerasae.build(name, hidden_units=(8,), latent_dim=3) for name in ("ae-shallow", "dae-mlp", "vae-mlp")}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int32, np.bool_])
shapes = st.one_of(st.just((2, 28, 28, 1)), hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=30))


@SETTINGS
@given(name=st.sampled_from(sorted(MODELS)), shape=shapes, dtype=dtypes, data=st.data())
def test_any_image_input_works_or_gets_a_clear_error(name, shape, dtype, data):
    model = MODELS[name]
    x = data.draw(hnp.arrays(dtype, shape, elements=None if dtype is np.bool_ else
                             st.floats(-2, 2, width=16) if np.dtype(dtype).kind == "f" else st.integers(0, 255)))
    valid = (shape[1:] == (28, 28, 1) and np.dtype(dtype).kind == "f" and np.isfinite(x).all()
             and x.min() >= 0 and x.max() <= 1)
    for method in (model.reconstruct, model.score, model.encode):
        if valid:
            out = method(x)
            out = out[0] if isinstance(out, tuple) else out
            assert out.shape[0] == shape[0] and np.isfinite(np.asarray(out)).all()
        else:
            with pytest.raises((ValueError, TypeError), match=r"x (must|contains)"):
                method(x)


@SETTINGS
@given(name=st.sampled_from(sorted(MODELS)),
       x=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.just(28), st.just(28), st.just(1)),
                    elements=st.floats(0, 1, width=32)))
def test_valid_images_give_images_in_range(name, x):
    model = MODELS[name]
    recon = model.reconstruct(x).numpy()
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    assert np.isfinite(model.score(x).numpy()).all()


@SETTINGS
@given(name=st.sampled_from(sorted(MODELS)),
       z=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 5)),
                    elements=st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))))
def test_any_code_input_works_or_gets_a_clear_error(name, z):
    model = MODELS[name]
    if z.shape[1] == model.latent_dim and np.isfinite(z).all():
        out = model.decode(z).numpy()
        assert out.shape == (len(z), 28, 28, 1) and np.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match=r"z (must|contains)"):
            model.decode(z)
