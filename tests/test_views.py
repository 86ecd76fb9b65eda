"""The views read measures only: no module of `reprolib.views` imports torch, or a module of the
library that reads models or datasets."""
import json
import pkgutil
import subprocess
import sys

import reprolib.views

VIEWS = sorted(m.name for m in pkgutil.iter_modules(reprolib.views.__path__, "reprolib.views."))
ALLOWED = {"reprolib", "reprolib.views", "reprolib.config", "reprolib.staleness", "reprolib.atomic",
           "reprolib.provenance"}


def test_the_views_import_no_torch_and_no_compute_module():
    assert {"reprolib.views.tables", "reprolib.views.plots", "reprolib.views.page",
            "reprolib.views.measures"} <= set(VIEWS)
    probe = ("import json, sys\n"
             f"for m in {VIEWS!r}: __import__(m)\n"
             "print(json.dumps(sorted(k for k in sys.modules if k == 'torch' "
             "or k.startswith('reprolib'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                       text=True, check=True).stdout)
    assert "torch" not in loaded
    assert set(loaded) - set(VIEWS) <= ALLOWED, set(loaded) - set(VIEWS) - ALLOWED


def test_the_probe_sees_an_import_of_torch():
    """The check above can fail: the same probe, given a module that imports torch, finds it."""
    probe = ("import json, sys\nimport reprolib.models\n"
             "print(json.dumps('torch' in sys.modules))")
    assert json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                     text=True, check=True).stdout)


def test_the_trigger_figure_is_drawn_from_arrays_with_the_triggers_footprint():
    import numpy as np
    from reprolib.views import plots
    clean = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    patched = clean.copy()
    patched[:, :, 6:, 6:] = 10                                  # a faint 2×2 patch
    footprint = plots.footprint(patched[0], clean[0])
    assert footprint[:, 6:, 6:].min() == 255 and footprint[:, :6].max() == 0
    assert plots.footprint(clean[0], clean[0]).max() == 0       # no trigger, no footprint
    fig = plots.trigger_grid({"clean": clean, "badnets": patched})
    axes = np.array(fig.axes).reshape(2, 3)
    assert [a.get_ylabel() for a in axes[:, 0]] == ["clean", "BadNets"]
    assert axes[0, 2].get_title() == "|trigger|"


def test_measures_come_back_as_written_arrays_and_all(tmp_path):
    import numpy as np
    import pytest
    from reprolib.views import measures
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    value = {"triggers": {"clean": images, "badnets": images[::-1].copy()},
             "rows": [{"ca": np.float64(91.5), "asr": float("nan"), "n": np.int64(3)}],
             "claims": {"min_asr": 97.25, "none": None}, "text": "**bold**"}
    path = tmp_path / "measures" / "attacks.json"
    measures.write(path, value)
    back = measures.read(path)
    assert np.array_equal(back["triggers"]["badnets"], images[::-1])
    assert back["triggers"]["clean"].dtype == np.uint8
    assert back["rows"] == [{"ca": 91.5, "asr": None, "n": 3}]       # NaN as a missing cell
    assert back["claims"] == value["claims"] and back["text"] == "**bold**"
    assert "$array" in path.read_text() and path.with_suffix(".safetensors").is_file()
    measures.write(tmp_path / "other.json", {"a": np.zeros(3)})
    path.with_suffix(".safetensors").write_bytes((tmp_path / "other.safetensors").read_bytes())
    with pytest.raises(measures.MeasuresCorrupt, match="is missing or is not the arrays file"):
        measures.read(path)
    with pytest.raises(ValueError, match="two arrays of the measures would be stored as 'a.b'"):
        measures.write(tmp_path / "clash.json", {"a.b": np.zeros(1), "a": {"b": np.ones(1)}})
    with pytest.raises(TypeError, match=r"a measure cannot be a set \(at x\)"):
        measures.write(tmp_path / "bad.json", {"x": {1, 2}})


def test_a_page_refuses_measures_computed_with_other_parameters(tmp_path):
    import pytest
    from reprolib.config import ParameterError
    from reprolib.views import measures
    from reprolib.views.page import Page
    record = {"profile": "smoke", "dataset": "fashion-mnist", "model": "small_cnn", "seeds": [0],
              "executed": {}}
    path = tmp_path / "attacks.json"
    measures.write(path, {"params": {"ratio": 0.1, "seed": 0}, "record": record, "values": {},
                          "by_seed": {}, "changed": {}})
    page = Page.measured("attacks", measures=str(path), ratio=0.1, seed=0)
    assert page.rendered and page.seeds == [0] and page.values == {}
    with pytest.raises(ParameterError, match=r"other parameters than these \(ratio=0.1, not 0.2\)"):
        Page.measured("attacks", measures=str(path), ratio=0.2, seed=0)


def test_the_seeds_figure_takes_a_number_only_when_it_is_drawn(monkeypatch):
    from reprolib.views import display, reference
    shown = []
    monkeypatch.setattr(display, "display", shown.append)
    ref = reference.load("attacks")
    run = {"profile": "smoke", "dataset": "fashion-mnist", "model": "small_cnn"}
    two = {0: {"min_asr_dirty": 97.0}, 1: {"min_asr_dirty": 99.0}}
    table = reference.compare(ref, {"min_asr_dirty": [97.0, 99.0]}, run)
    assert display.comparison(table, ref, two, 3) is True
    assert any("Figure 3." in str(getattr(s, "data", "")) for s in shown)
    unmeasured = {0: {}, 1: {}}                  # two seeds, but no row measured at both
    table = reference.compare(ref, {"min_asr_dirty": [None, None]}, run)
    assert display.comparison(table, ref, unmeasured, 4) is False


def test_a_page_says_which_parameters_its_run_set_otherwise(monkeypatch):
    from reprolib.views import display
    from reprolib.views.page import notebook_defaults
    defaults = notebook_defaults("attacks")
    assert defaults["ratio"] == 0.1 and defaults["attacks"][0] == "badnets"
    line = display.changed_line({"ratio": 0.05, "attacks": ["badnets", "wanet"]})
    assert line == ("**Set for this run** (the notebook's defaults otherwise): ratio = 0.05; "
                    "attacks = badnets, wanet.")
