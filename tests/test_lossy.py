"""What a JPEG copy changes (reprolib.lossy): the round trip, the measurement and its page."""
import pytest
import torch

from reprolib import lossy
from reprolib.config import ParameterError


def test_the_round_trip_is_pillows_jpeg_at_the_quality_asked():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(
        torch.randint(0, 256, (4, 3, 8, 8), generator=g).float(), size=32, mode="bilinear")
    images = smooth.round().clamp(0, 255).to(torch.uint8)
    back = lossy.jpeg(images, 75)
    assert back.shape == images.shape and back.dtype == torch.uint8
    error = (back.float() - images.float()).abs().mean()
    assert 0.5 < error < 10                         # lossy, but the same pictures
    assert (lossy.jpeg(images, 95).float() - images.float()).abs().mean() < error
    grey = lossy.jpeg(images[:, :1], 75)
    assert grey.shape == (4, 1, 32, 32)
    with pytest.raises(ParameterError, match="quality=0"):
        lossy.jpeg(images, 0)


def test_measure_trains_each_attack_on_both_copies_and_the_page_shows_them(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "zoo"))
    rows = lossy.measure("fashion-mnist", attacks=("badnets",), seeds=(0, 1), profile="smoke",
                         device="cpu", progress=False)
    assert list(rows.columns) == ["attack", "copy", "seed", "ca", "asr", "train_s"]
    assert sorted(set(rows["copy"])) == ["JPEG-75", "as it is"] and len(rows) == 4
    assert rows[["ca", "asr"]].apply(lambda c: c.between(0, 100)).all().all()
    result = lossy.run(tmp_path / "jpeg.json", dataset="fashion-mnist", attacks=("badnets",),
                       seeds=(0, 1), profile="smoke", device="cpu", progress=False)
    assert result["record"]["seeds"] == [0, 1] and result["record"]["profile"] == "smoke"
    page = lossy.page(result)
    assert "| BadNets | as it is |" in page and "| BadNets | JPEG-75 |" in page
    assert page.count(" ± ") >= 4 and "over 2 seeds" in page and "its 4 models took" in page
    assert "has not been run yet" in lossy.page(None)


def test_measure_refuses_a_repeated_seed_and_a_bad_attack_before_reading_any_data():
    with pytest.raises(ParameterError, match="repeats a seed"):
        lossy.measure(seeds=(0, 0))
    with pytest.raises(ParameterError, match="nope"):
        lossy.measure(attacks=("nope",), data_dir="/nonexistent")
