"""The views read measures only: no module of `reprolib.views` imports torch, or a module of the
library that reads models or datasets."""
import json
import pkgutil
import subprocess
import sys

import reprolib.views

VIEWS = sorted(m.name for m in pkgutil.iter_modules(reprolib.views.__path__, "reprolib.views."))
ALLOWED = {"reprolib", "reprolib.views", "reprolib.config", "reprolib.staleness"}


def test_the_views_import_no_torch_and_no_compute_module():
    assert {"reprolib.views.tables", "reprolib.views.plots", "reprolib.views.reference"} <= set(VIEWS)
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
