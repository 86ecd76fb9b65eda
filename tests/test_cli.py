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
    assert listing.startswith("3 models and 0 job results in") and "victim sig ratio 0.1" in listing
    assert main(["demo", "--profile", "smoke", "--attack", "trojan"]) == 2
    assert "attack='trojan' is not allowed" in capsys.readouterr().err


def test_data_reports_the_folder_and_sizes(capsys, cifar_mini):
    with pytest.warns(UserWarning, match="160 training images"):
        assert main(["data", "cifar10", "--data-dir", str(cifar_mini)]) == 0
    out = capsys.readouterr().out
    assert (f"cifar10: {cifar_mini / 'cifar-10-batches-py'} (160 train + 40 test images, "
            f"(3, 32, 32); official batches), read in") in out


class Forbidden:
    """What a malicious pickle would ask the unpickler to build."""


@pytest.mark.parametrize("damage, message", [
    (lambda good: b"not a pickle at all" * 50, "is not a readable CIFAR batch"),
    (lambda good: good[:len(good) // 2], "is not a readable CIFAR batch"),
    (lambda good: __import__("pickle").dumps({b"data": Forbidden()}),
     "Forbidden from a CIFAR file"),
    (lambda good: __import__("pickle").dumps({b"data": [1, 2], b"labels": [0]}),
     "a CIFAR batch has N×3072 and N")])
def test_a_damaged_cifar_file_ends_the_command_with_one_line(capsys, cifar_mini, tmp_path, damage,
                                                           message, monkeypatch):
    import shutil
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_mini / "cifar-10-batches-py", folder)
    batch = folder / "data_batch_1"
    good = batch.read_bytes()
    batch.chmod(0o644)
    batch.write_bytes(damage(good))
    for argv in (["data", "cifar10", "--data-dir", str(tmp_path)],
                 ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--profile",
                  "smoke", "--device", "cpu"],
                 ["run", "attacks", "--dataset", "cifar10", "--profile", "smoke"]):
        monkeypatch.setenv("REPRO_DATA_DIR", str(tmp_path))   # where `repro run` looks
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"repro: {batch} ") and message in err
        assert "\n" not in err and "Traceback" not in err


def test_ctrl_c_says_which_command_resumes(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr("reprolib.cli.cmd_plan", interrupted)
    assert main(["plan", "attacks", "--profile", "smoke"]) == 130
    assert "`repro plan attacks --profile smoke` resumes" in capsys.readouterr().err


def test_a_full_disk_ends_the_command_in_one_line_and_the_next_run_finishes(capsys,
                                                                            monkeypatch):
    import errno
    import os
    from reprolib.zoo import Zoo

    def full(fd):                 # the disk fills as the entry is written (simulated)
        raise OSError(errno.ENOSPC, "No space left on device")
    argv = ["train", "--profile", "smoke", "--epochs", "1"]
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "`repro train --profile smoke --epochs 1`" \
        in err and "Traceback" not in err
    assert not [p for p in Zoo().root.iterdir() if p.is_file()]        # no partial entry
    assert main(argv) == 0 and "trained now" in capsys.readouterr().out
    assert len(Zoo().entries()) == 1
