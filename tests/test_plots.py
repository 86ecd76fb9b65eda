import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from reprolib import embedding  # noqa: E402
from reprolib.config import ParameterError  # noqa: E402
from reprolib.views import plots  # noqa: E402


def clusters():
    g = torch.Generator().manual_seed(0)
    a = 0.2 + 0.02 * torch.randn(50, 9, generator=g)
    b = 0.8 + 0.02 * torch.randn(50, 9, generator=g)
    b[:, :4] = 0.1
    return torch.cat([a, b])


@pytest.mark.parametrize("method", embedding.EMBEDDINGS)
def test_the_embedding_keeps_two_trigger_clusters_apart(method):
    xy = embedding.embed(clusters(), method)
    assert xy.shape == (100, 2)
    within = max(np.linalg.norm(xy[:50] - xy[:50].mean(0), axis=1).max(),
                 np.linalg.norm(xy[50:] - xy[50:].mean(0), axis=1).max())
    assert np.linalg.norm(xy[:50].mean(0) - xy[50:].mean(0)) > 2 * within


def test_the_svd_embedding_is_the_uncentred_top_two_directions():
    x = clusters()
    xy = embedding.embed(x, "svd")
    # the same variance as projecting on the leading right singular vectors
    s = torch.linalg.svdvals(x)
    assert np.allclose(np.linalg.norm(xy, axis=0), s[:2].numpy(), rtol=1e-4)
    with pytest.raises(ParameterError, match="embedding='umap' is not allowed"):
        embedding.embed(x, "umap")


def test_thumbnails_draw_each_trigger_where_it_is_put():
    fig, ax = plt.subplots()
    triggers = np.random.default_rng(0).random((3, 27))
    plots.thumbnails(ax, [(0, 0), (1, 1), (2, 0)], triggers, channels=3)
    assert len(ax.artists) == 3
    assert [a.xybox for a in ax.artists] == [(0, 0), (1, 1), (2, 0)]
    picture = plots.patch_image(triggers[1], 3)
    assert picture.shape == (3, 3, 3) and np.allclose(picture[..., 0], triggers[1][:9].reshape(3, 3))
    assert plots.patch_image(triggers[1][:9], 1).shape == (3, 3)          # grey: one channel
    plt.close(fig)
