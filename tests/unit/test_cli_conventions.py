"""One set of conventions for every command: bad input (a missing or malformed file, a cloud
that is not up, an argument of the wrong kind) is one line on stderr and an exit status that
says which it was (1: the command failed and says why; 2: usage), never a traceback; every
command that prints data has --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneloop import cli


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))  # no local cloud up there
    monkeypatch.delenv("TUNELOOP_STAGE", raising=False)
    (tmp_path / "notjson.json").write_text("{name: demo")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "project.json").write_text(json.dumps({"name": "demo", "config": {"task": "text-classification"}}))
    names = {"notjson": "notjson.json", "listjson": "list.json", "binary": "binary.json", "project": "project.json"}
    return {key: str(tmp_path / name) for key, name in names.items()} | {"missing": str(tmp_path / "nowhere.json")}


FAILURES: list[tuple[list[str], str]] = [
    (["project", "create", "--file", "{missing}"], "cannot read"),
    (["project", "create", "--file", "{notjson}"], "is not JSON"),
    (["project", "create", "--file", "{listjson}"], "without a config object"),
    (["project", "create", "--file", "{binary}"], "cannot read"),
    (["project", "update", "demo", "--file", "{missing}"], "cannot read"),
    (["project", "update", "other", "--file", "{project}"], "a project keeps its name"),
    (["project", "create", "--file", "{project}"], "local cloud"),
    (["project", "list"], "local cloud"),
    (["project", "show", "demo"], "local cloud"),
    (["project", "delete", "demo", "--yes"], "local cloud"),
    (["drop", "{missing}", "--project", "demo"], ""),
    (["feedback", "send", "{missing}", "--project", "demo"], ""),
    (["feedback", "list", "--project", "demo"], "local cloud"),
    (["events"], "local cloud"),
    (["drops"], "local cloud"),
    (["runs"], "local cloud"),
    (["run", "show", "aaaaaaaaaaaa"], "local cloud"),
    (["run", "stop", "aaaaaaaaaaaa"], "local cloud"),
    (["run", "approve", "aaaaaaaaaaaa"], "local cloud"),
    (["run", "retrain", "aaaaaaaaaaaa"], "local cloud"),
    (["report", "aaaaaaaaaaaa"], "local cloud"),
    (["watch", "aaaaaaaaaaaa"], "local cloud"),
    (["event", "send", "{notjson}"], "is not JSON"),
    (["event", "send", "{missing}"], "cannot read"),
    (["env"], "not up"),
    (["deploy"], "needs --stage"),
    (["destroy"], "needs --stage"),
    (["runs", "--stage", "Not A Stage"], "stage"),
]
USAGE: list[list[str]] = [
    ["runs", "--limit", "many"],
    ["project", "create"],
    ["watch"],
    ["run", "frobnicate", "x"],
    ["configure", "--region", "eu-west-1"],
    ["nonsense"],
    ["demo", "--quick"],
]


def run(argv: list[str], files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    argv = [a.format(**files) if "{" in a else a for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv,needle", FAILURES, ids=[" ".join(a) for a, _ in FAILURES])
def test_a_command_that_fails_says_why_in_one_line_and_exits_1(
    argv: list[str], needle: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, files, capsys)
    assert code == 1, (code, out, err)
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("tuneloop: ") and needle in lines[-1], err
    assert "Traceback" not in err + out
    assert all(line.endswith("s)…") for line in lines[:-1]), err  # only progress before it


@pytest.mark.parametrize("argv", USAGE, ids=[" ".join(a) for a in USAGE])
def test_a_usage_error_exits_2_with_the_usage(
    argv: list[str], files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(argv, files, capsys)
    assert code == 2 and "error:" in err.strip().splitlines()[-1] and "Traceback" not in err, err


def test_an_unexpected_error_is_one_line_unless_debugging(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: Any) -> int:
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "cmd_runs", broken)
    monkeypatch.setattr(cli, "build_parser", _with(cli.build_parser, "runs", broken))
    code, _, err = run(["runs"], files, capsys)
    assert code == 1 and err.strip() == "tuneloop: unexpected TypeError: a bug (TUNELOOP_DEBUG=1 shows where)"
    monkeypatch.setenv("TUNELOOP_DEBUG", "1")
    with pytest.raises(TypeError):
        cli.main(["runs"])


def _with(build: Any, command: str, func: Any) -> Any:
    def parser() -> Any:
        built = build()
        for action in built._subparsers._group_actions:
            action.choices[command].set_defaults(func=func)
        return built

    return parser


def test_every_command_that_prints_data_has_json() -> None:
    parser = cli.build_parser()
    commands = {}
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
            for group in nested:
                for inner, leaf in group.choices.items():
                    commands[f"{name} {inner}"] = leaf
            if not nested:
                commands[name] = sub
    # What prints a result rather than acting on the machine (up, down, env's exports, docs,
    # configure's settings, ui, demo, deploy, destroy, event send, dlq redrive).
    data = ["status", "project create", "project update", "project list", "project show", "project delete", "drop",
            "feedback send", "feedback list", "events", "drops", "runs", "run show", "run stop", "run approve",
            "run reject", "run retrain", "report", "watch", "dlq list"]  # fmt: skip
    missing = [c for c in data if c != "project show" and "--json" not in commands[c]._option_string_actions]
    assert missing == []


def test_every_error_tuneloop_defines_derives_from_one_base() -> None:
    """So a caller tells a failure tuneloop reports from a bug (the CLI prints the first
    as its one line, and the second too, but says it is unexpected)."""
    import importlib
    import inspect
    import pkgutil

    import chalicelib
    import tuneloop
    from chalicelib.spec import TuneloopError

    # (training/inference.py ships alone in each model's code/ folder: it imports nothing of
    # tuneloop's, so its errors cannot derive from spec's.)
    modules = ["app", "training.train", "training.prepare", "training.evaluate", "training.drift", "training.quality"]
    for package in (chalicelib, tuneloop):
        modules += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    defined = []
    for name in modules:
        if name.endswith(("__main__", ".demo", ".demo_llm", ".deploy", ".configure")):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # training.* import their siblings as top-level modules inside the containers
        defined += [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
        ]
    assert len(defined) > 15
    # (training/spec.py is also chalicelib/spec.py, imported twice under two names: by name)
    based = [e for e in defined if any(b.__name__ == TuneloopError.__name__ for b in e.__mro__[1:])]
    assert [e.__qualname__ for e in defined if e not in based and e.__name__ != TuneloopError.__name__] == []


def test_the_serving_code_imports_nothing_of_tuneloops() -> None:
    """train.py copies inference.py alone into each model's code/ folder, where the
    endpoint's model server imports it: a sibling module it imported would not be there."""
    import ast

    training = Path(__file__).resolve().parents[2] / "training"
    siblings = {p.stem for p in training.glob("*.py")}
    tree = ast.parse((training / "inference.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported & (siblings | {"chalicelib", "tuneloop", "training"}) == set()
