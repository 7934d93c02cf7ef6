"""The warm instance's fork server: a forked process behaves as a cold ``python`` would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tuneloop.local.container import toolkit
from tuneloop.local.processes import running
from tuneloop.local.sagemaker.warmpool import Instance


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    started = Instance("unit", toolkit.instance_environment(), modules=("--only", "json"))
    assert started.wait_ready(60)
    yield started
    started.terminate()
    assert started.process.poll() is not None and not started.folder.exists()


def both(python: Path, *argv: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[str, str]:
    """The same command through the warm instance and through a cold interpreter."""
    outputs = []
    for interpreter in (str(python), sys.executable):
        done = subprocess.run(
            [interpreter, *argv], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
        )
        outputs.append(f"rc={done.returncode}\n{done.stdout}{done.stderr}")
    return outputs[0], outputs[1]


def test_a_forked_program_sees_what_a_cold_one_sees(instance: Instance, tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("VALUE = 'the job folder provides this'\n")
    (tmp_path / "json").mkdir()  # a folder without __init__.py hides nothing
    script = tmp_path / "show.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, sys, helper
            print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "x": os.environ.get("TL_X"),
                              "path": sys.path, "helper": helper.VALUE, "name": __name__}))
            sys.exit(int(os.environ.get("TL_CODE", "0")))
            """
        )
    )
    warm, cold = both(instance.python, "--", str(script), "a", "--b", cwd=tmp_path, env={"TL_X": "1", "TL_CODE": "3"})
    assert warm == cold and cold.startswith("rc=3\n")
    # Code given as text (-c) is never run by the instance: it runs cold, with the same result.
    warm, cold = both(instance.python, "-c", "import sys; print(sys.argv, sys.path[0]); raise SystemExit('no')", "z",
                      cwd=tmp_path)  # fmt: skip
    assert warm == cold and cold.startswith("rc=1\n")
    from tuneloop.local.container.warm_launcher import warm_form

    assert not warm_form(["-c", "print(1)"]) and not warm_form(["-u", "-c", "0"]) and warm_form(["-m", "helper"])
    warm, cold = both(instance.python, "-m", "helper", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert warm == cold == "rc=0\n"
    # A command line the instance does not take (here -W) runs cold, with the same result.
    warm, cold = both(instance.python, "-W", "ignore", "-c", "print('ok')", cwd=tmp_path)
    assert warm == cold == "rc=0\nok\n"


def test_a_module_the_job_provides_is_the_jobs_not_the_instances(instance: Instance, tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text("dumps = lambda value: 'the job json'\n")
    (tmp_path / "run.py").write_text("import json; print(json.dumps({}))\n")
    warm, cold = both(instance.python, "run.py", cwd=tmp_path)
    assert warm == cold == "rc=0\nthe job json\n"


def test_signals_reach_the_forked_process_and_a_killed_launcher_takes_it_along(
    instance: Instance, tmp_path: Path
) -> None:
    script = tmp_path / "hold.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys, time
            signal.signal(signal.SIGTERM, lambda *_: (os.write(1, b"checkpointed\\n"), sys.exit(143)))
            print(os.getpid(), flush=True)
            time.sleep(120)
            """
        )
    )
    launcher = subprocess.Popen(
        [str(instance.python), str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert launcher.stdout is not None
    forked = int(launcher.stdout.readline())
    assert forked != launcher.pid
    os.killpg(launcher.pid, signal.SIGTERM)  # what a stop does: SIGTERM to the job's group
    assert launcher.wait(30) == 143 and launcher.stdout.read() == "checkpointed\n"

    launcher = subprocess.Popen(
        [str(instance.python), str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert launcher.stdout is not None
    forked = int(launcher.stdout.readline())
    os.killpg(launcher.pid, signal.SIGKILL)  # past the grace period
    assert launcher.wait(30) == -signal.SIGKILL
    wait_for(lambda: not running(forked), timeout=10, what="the forked process ended with its launcher")

    # A process that dies by a signal is reported as that signal.
    launcher = subprocess.Popen(
        [str(instance.python), "-c", "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"],
        stderr=subprocess.DEVNULL,
    )
    assert launcher.wait(30) == -signal.SIGABRT


def test_a_jobs_launcher_ends_only_when_every_process_of_its_job_has(instance: Instance, tmp_path: Path) -> None:
    """A cold job's process group empties only when its last process ends, and the local
    SageMaker waits for that before it uploads checkpoints: a toolkit that exits on
    SIGTERM while its script still writes the checkpoint must not end the job early."""
    marker = tmp_path / "grandchild-done"
    script = tmp_path / "spawn.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import subprocess, sys
            # The toolkit's way: the script through this interpreter (the instance's launcher).
            subprocess.Popen([sys.executable, "-c",
                              "import time; time.sleep(1.5); open({str(marker)!r}, 'w').close()"])
            """
        )
    )
    launcher = subprocess.run([str(instance.python), str(script)], timeout=60)
    assert launcher.returncode == 0 and marker.exists()
