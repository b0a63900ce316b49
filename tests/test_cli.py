"""One way to run the chain: ``lmops run`` is ``lmops pipeline run`` (the same function, the same options)."""

from lmops.cli import build_parser, cmd_run


def _options(argv: list[str]) -> dict:
    args = vars(build_parser().parse_args(argv))
    return {k: v for k, v in args.items() if k not in ("command", "action", "out", "fn")}


def test_run_is_pipeline_run():
    parser = build_parser()
    assert parser.parse_args(["run"]).fn is cmd_run
    argv = ["--runner", "inprocess", "--launcher", "local", "--model-name", "m", "--source", "a", "--set", "x=1"]
    assert _options(["run", *argv]) == _options(["pipeline", "run", *argv])


def test_the_in_process_runner_is_a_choice_and_a_typo_is_refused(capsys):
    import pytest

    assert build_parser().parse_args(["run", "--runner", "inprocess"]).runner == "inprocess"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--runner", "in-process"])
    assert "invalid choice" in capsys.readouterr().err
