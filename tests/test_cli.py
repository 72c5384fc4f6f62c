import json

from flows.cli import build_config, parser


def test_options_and_config_file_override_defaults(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"ingest": {"crop": "roi", "roi": [1, 2, 30, 40]}, "train": {"lr": 0.01}}))
    args = parser().parse_args(["pipeline", "--raw", "r", "--config", str(config), "--epochs", "7",
                                "--beta", "0.5", "--beta-schedule", "cyclical", "--free-bits", "0.2"])
    cfg = build_config(args)
    assert cfg.ingest.roi == (1, 2, 30, 40) and cfg.ingest.crop == "roi" and cfg.train.lr == 0.01
    assert (cfg.train.epochs, cfg.model.beta, cfg.model.beta_schedule, cfg.model.free_bits) == (7, 0.5, "cyclical", 0.2)
    assert cfg.train.device == "auto"  # untouched defaults stay


def test_unknown_config_keys_are_named(tmp_path):
    import pytest

    from pipeline.config import PanelConfig
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"epoch": 3}}))
    with pytest.raises(ValueError, match=r"bad.json.*unknown config keys in \[train\]: \['epoch'\]"):
        PanelConfig.load(bad)


def test_model_family_and_training_options_reach_the_config():
    args = parser().parse_args(["train", "--model", "vqvae", "--codebook-size", "64", "--codebook-update", "loss",
                                "--recon-loss", "bce", "--workers", "2", "--resume", "--model-name", "panel-anomaly-elpv"])
    cfg = build_config(args)
    assert (cfg.model.model_type, cfg.model.codebook_size, cfg.model.codebook_update, cfg.model.recon_loss) == (
        "vqvae", 64, "loss", "bce")
    assert cfg.train.loader_workers == 2 and args.resume is True and cfg.tracking.model_name == "panel-anomaly-elpv"


def test_bench_model_types_are_checked_at_the_command_line(capsys):
    import pytest

    assert parser().parse_args(["bench", "--models", "vqvae"]).models == ("vqvae",)
    assert parser().parse_args(["bench"]).models == ("convvae", "vqvae")
    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "--models", "convae"])
    assert "unknown model type(s) ['convae']; choose from convvae, vqvae" in capsys.readouterr().err


def test_bench_split_and_training_seeds_are_checked_at_the_command_line(capsys):
    import pytest

    args = parser().parse_args(["bench", "--split-seeds", "0,1,2", "--train-seeds", "0,1"])
    assert (args.split_seeds, args.train_seeds) == ((0, 1, 2), (0, 1))
    args = parser().parse_args(["bench"])
    assert args.split_seeds is None and args.train_seeds is None  # the config's ingest.split_seed, train.seed
    for option in ("--split-seeds", "--train-seeds"):
        for bad, said in (("0,x", "seeds are whole numbers"), ("1,1", "different non-negative"),
                          ("-1", "different non-negative")):
            with pytest.raises(SystemExit):
                parser().parse_args(["bench", option, bad])
            assert said in capsys.readouterr().err


def test_bench_sets_are_read_as_names_once_each(capsys):
    import pytest

    assert parser().parse_args(["bench", "--sets", "elpv, piped,elpv"]).sets == ("elpv", "piped")
    assert parser().parse_args(["bench"]).sets == ()  # every set found
    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "--sets", ","])
    assert "no data set named in ','" in capsys.readouterr().err
