"""User data through `factory="package.module:function"`: the happy path and every error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from compress.core.errors import DataError
from compress.datasets import check_spec, load

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def fake_data_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def test_good_factory_gets_kwargs_and_gives_a_dataset() -> None:
    import fake_data

    fake_data.CALLS.clear()
    ds = load("factory", factory="fake_data:good", kwargs={"n": 40, "scale": 2.0}, seed=1, calib_samples=8)
    assert fake_data.CALLS == [{"n": 40, "scale": 2.0}]
    assert ds.name == "fake_data:good"
    assert (ds.input_shape, ds.num_classes, ds.labels) == ((1, 6), 3, ("a", "b", "c"))
    assert [len(s.y) for s in (ds.train, ds.val, ds.test, ds.calib)] == [40, 6, 9, 8]
    assert all(s.x.dtype == np.float32 and s.y.dtype == np.int64 for s in (ds.train, ds.val, ds.test, ds.calib))
    train_rows = {hashlib.sha1(r.tobytes()).hexdigest() for r in ds.train.x}
    assert {hashlib.sha1(r.tobytes()).hexdigest() for r in ds.calib.x} <= train_rows
    again = load("factory", factory="fake_data:good", kwargs={"n": 40, "scale": 2.0}, seed=1, calib_samples=8)
    assert np.array_equal(again.calib.x, ds.calib.x)


def test_given_calib_is_used_as_is() -> None:
    ds = load("factory", factory="fake_data:with_calib")
    assert len(ds.calib.y) == 4 and ds.calib.x.min() >= 30  # rows from offset 3 (values ≥ 3000/100)


def test_check_spec_imports_but_does_not_call_the_factory() -> None:
    check_spec("factory", {"factory": "fake_data:explodes"})


@pytest.mark.parametrize(("spec", "fragments"), [
    ("fake_data", ["not of the form 'package.module:function'"]),
    ("fake_data:good:x", ["not of the form"]),  # one colon, dotted names on each side
    ("no_such_module_e7:make", ["does not import", "ModuleNotFoundError", "no_such_module_e7"]),
    ("fake_data:missing", ["has no attribute 'missing'"]),
    ("fake_data:NOT_CALLABLE", ["not callable"]),
    ("fake_data:returns_list", ["returned a list, not a mapping"]),
    ("fake_data:missing_test", ["missing keys ['test']"]),
    ("fake_data:extra_key", ["unknown keys ['extras']"]),
    ("fake_data:mismatched", ["train", "x has 10 samples but y has 9"]),
    ("fake_data:fractional_labels", ["val", "class ids"]),
    ("fake_data:shape_mismatch", ["differ in shape"]),
    ("fake_data:too_few_labels", ["2 labels for class ids up to 2"]),
    ("fake_data:not_a_pair", ["val", "expected a pair (x, y)"]),
    ("fake_data:with_nan", ["test", "NaN"]),
])
def test_factory_errors_name_the_factory_and_the_fix(spec: str, fragments: list[str]) -> None:
    with pytest.raises(DataError) as caught:
        load("factory", factory=spec)
    message = str(caught.value)
    assert f"data factory {spec!r}" in message and "Fix:" in message
    for fragment in fragments:
        assert fragment in message


def test_import_error_inside_the_module_is_reported_with_its_text(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Written here, not in the tests folder: the suite's doctest collection would import it and fail.
    (tmp_path / "fake_broken_data.py").write_text("import not_installed_dependency_e7\n\ndef make():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DataError, match="No module named 'not_installed_dependency_e7'"):
        check_spec("factory", {"factory": "fake_broken_data:make"})


@pytest.mark.parametrize(("options", "fragment"), [
    ({"factory": "fake_data:good", "kwargs": [1, 2]}, "kwargs is a list"),
    ({"factory": "fake_data:good", "val_fraction": 0.2}, "unknown option(s) val_fraction"),
])
def test_factory_option_errors(options: dict, fragment: str) -> None:
    with pytest.raises(DataError) as caught:
        load("factory", **options)
    assert fragment in str(caught.value)
