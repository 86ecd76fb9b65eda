import json
import os

import pytest
import torch
from safetensors import safe_open

from reprolib import models, zoo
from reprolib.zoo import Zoo

SPEC = {"model": "small_cnn", "data": "abc", "recipe": {"epochs": 1, "lr": 0.1}, "seed": 0}


class Fit:
    """Stands in for training: a model whose weights change with each call, which it counts."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        model = build()
        with torch.no_grad():
            model.conv1.weight.add_(self.calls)
        return model.state_dict(), {"metrics": {"ca": 0.5}, "device": "cpu"}


def build():
    return models.build("small_cnn", 10, 1, seed=0)


def fetched(store, fit):
    """`store.fetch` of SPEC as a model, with its card."""
    card, weights = store.fetch(SPEC, fit)
    model = build()
    model.load_state_dict(weights)
    return model, card


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_key_is_order_free_and_covers_every_field():
    reordered = {"seed": 0, "recipe": {"lr": 0.1, "epochs": 1}, "data": "abc", "model": "small_cnn"}
    assert zoo.key(SPEC) == zoo.key(reordered)
    for change in ({"seed": 1}, {"data": "abd"}, {"model": "resnet18"},
                   {"recipe": {"epochs": 2, "lr": 0.1}}, {"attack": {"name": "badnets"}}):
        assert zoo.key({**SPEC, **change}) != zoo.key(SPEC)


def test_same_key_gives_the_same_weights_without_retraining(tmp_path):
    fit, store = Fit(), Zoo()
    assert store.root == tmp_path / "zoo"                   # $REPRO_CACHE_DIR (conftest)
    first, card = fetched(store, fit)
    second, card2 = fetched(store, fit)
    assert fit.calls == 1 and not card["cached"] and card2["cached"]
    assert all(torch.equal(a, b) for a, b in zip(weights(first).values(), weights(second).values()))
    assert card2["metrics"] == {"ca": 0.5} and card2["spec"] == SPEC and card2["device"] == "cpu"
    path, _ = store.paths(card["key"])
    with safe_open(str(path), framework="pt") as f:         # plain safetensors, no pickle
        assert "conv1.weight" in f.keys()


def test_a_corrupted_weights_file_is_retrained_not_loaded(capsys):
    fit, store = Fit(), Zoo()
    _, card = fetched(store, fit)
    path, _ = store.paths(card["key"])
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))
    model, card2 = fetched(store, fit)
    assert fit.calls == 2 and not card2["cached"]
    assert "corrupted" in capsys.readouterr().err
    assert torch.equal(model.conv1.weight, build().conv1.weight + 2)
    assert fetched(store, fit)[1]["cached"] and fit.calls == 2


@pytest.mark.parametrize("damage", ["truncate", "remove", "garble"])
def test_a_damaged_card_means_retraining(damage):
    fit, store = Fit(), Zoo()
    _, card = fetched(store, fit)
    weights_path, card_path = store.paths(card["key"])
    if damage == "truncate":
        weights_path.write_bytes(weights_path.read_bytes()[:1000])
    elif damage == "remove":
        card_path.unlink()
    else:
        card_path.write_text(card_path.read_text()[:40])
    assert not fetched(store, fit)[1]["cached"] and fit.calls == 2


def test_an_interrupted_write_leaves_no_file(monkeypatch):
    fit, store = Fit(), Zoo()

    def interrupted(fd):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fetched(store, fit)
    assert [p.name for p in store.root.iterdir()] == ["claims"]      # the claim's lock only
    assert not fetched(store, fit)[1]["cached"] and fit.calls == 2


def test_weights_without_a_card_are_not_an_entry(monkeypatch):
    fit, store = Fit(), Zoo()
    real_write = zoo.atomic_write

    def crash_before_card(path, payload):
        if path.suffix == ".json":
            raise KeyboardInterrupt
        real_write(path, payload)
    with monkeypatch.context() as m:
        m.setattr(zoo, "atomic_write", crash_before_card)
        with pytest.raises(KeyboardInterrupt):
            fetched(store, fit)
    assert [p.suffix for p in store.root.iterdir() if p.is_file()] == [".safetensors"]
    assert store.entries() == []
    _, card = fetched(store, fit)
    assert not card["cached"] and fit.calls == 2
    assert [c["key"] for c in store.entries()] == [card["key"]]
    assert sorted(p.suffix for p in store.root.iterdir() if p.is_file()) == [".json", ".safetensors"]


def test_cards_are_json_with_provenance():
    _, card = fetched(Zoo(), Fit())
    on_disk = json.loads(Zoo().paths(card["key"])[1].read_text())
    for field in ("key", "spec", "metrics", "wall_time_s", "device", "code_version", "torch",
                  "created", "sha256", "bytes"):
        assert field in on_disk
    assert "cached" not in on_disk
