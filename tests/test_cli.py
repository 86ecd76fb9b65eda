import pytest

from reprolib.cli import main


def test_bad_parameters_exit_2_with_the_message(capsys):
    assert main(["train", "--profile", "fast"]) == 2
    assert "profile='fast' is not allowed; choose one of: 'smoke', 'quick', 'paper'" in capsys.readouterr().err
    assert main(["demo", "--profile", "smoke", "--ratio", "2"]) == 2
    assert "ratio=2.0 is out of range" in capsys.readouterr().err


def test_missing_dataset_exits_2_with_where_it_looked(capsys, tmp_path):
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "dataset 'cifar10' not found" in err and str(tmp_path) in err


def test_demo_trains_then_reuses_models(capsys):
    assert main(["demo", "--profile", "smoke", "--attack", "badnets", "sig"]) == 0
    out = capsys.readouterr().out
    assert "profile smoke · dataset fashion-mnist · device cpu" in out
    assert "small_cnn, 2000 training images, 3 epochs; 10% poisoned, target class 0" in out
    rows = [line for line in out.splitlines() if line.startswith(("clean ", "badnets ", "sig "))]
    assert len(rows) == 3 and all(line.endswith("trained now") for line in rows)
    assert rows[1].split()[1] == "200"                       # poisoned images
    assert rows[2].split()[1] == str(round(0.1 * 2000))      # SIG: all from class 0
    ca = float(rows[1].split()[2].rstrip("%"))
    assert ca > 60

    assert main(["demo", "--profile", "smoke", "--attack", "badnets", "sig"]) == 0
    again = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith(("clean ", "badnets ", "sig "))]
    assert all(line.endswith("zoo") for line in again)
    scores = lambda line: [t for t in line.split() if t.endswith("%")]  # noqa: E731  (measured afresh)
    assert [scores(line) for line in again] == [scores(line) for line in rows]

    assert main(["zoo"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("3 models in") and "'name': 'sig'" in listing
    assert main(["demo", "--profile", "smoke", "--attack", "trojan"]) == 2
    assert "attack='trojan' is not allowed" in capsys.readouterr().err


def test_data_reports_the_folder_and_sizes(capsys, cifar_mini):
    with pytest.warns(UserWarning, match="160 training images"):
        assert main(["data", "cifar10", "--data-dir", str(cifar_mini)]) == 0
    out = capsys.readouterr().out
    assert f"cifar10: {cifar_mini / 'cifar-10-batches-py'} (160 train + 40 test images, (3, 32, 32))" in out
