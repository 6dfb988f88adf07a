"""What a Python user expects of rayd's errors and types."""

import os
import socket
import subprocess
import sys

import pytest

import ray
from ray import _raylet
from ray import exceptions


def test_a_remote_traceback_names_the_users_file_and_line(shared_cluster):
    @ray.remote
    def fails():
        raise ValueError("from the user's code")  # the line the traceback must show

    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(fails.remote())
    text = info.value.traceback_str
    assert f'File "{__file__}"' in text, text
    assert "<dynamic-code>" not in text
    assert "the line the traceback must show" in text


def test_a_script_task_traceback_names_the_script(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(
        "import ray\n"
        "ray.init(num_cpus=1)\n"
        "@ray.remote\n"
        "def divide(a, b):\n"
        "    return a / b\n"
        "try:\n"
        "    ray.get(divide.remote(1, 0))\n"
        "except ZeroDivisionError as e:\n"
        "    print(e)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f'File "{script}", line 5, in divide' in out.stdout, out.stdout
    assert "return a / b" in out.stdout


def test_a_cluster_that_does_not_answer_is_a_plain_sentence(cleanup):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(exceptions.RaySystemError) as info:
        ray.init(redis_address=f"127.0.0.1:{port}")
    message = str(info.value)
    assert message.endswith(f"cannot connect to redis at 127.0.0.1:{port}: connection refused"), message
    assert "Os {" not in message


def test_a_raylet_that_is_not_there_is_a_raylet_connection_error(tmp_path):
    with pytest.raises(exceptions.RayletConnectionError, match="cannot connect to the raylet at"):
        _raylet.CoreWorker(str(tmp_path / "no-raylet"))


class NeedsTwo(Exception):
    """Pickles as NeedsTwo(a), which its constructor refuses: it cannot be rebuilt."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def test_an_exception_that_cannot_be_rebuilt_names_the_task(shared_cluster):
    @ray.remote
    def raises_needs_two():
        raise NeedsTwo("first", "second")

    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(raises_needs_two.remote())
    message = str(info.value)
    assert "raises_needs_two" in message
    assert "cannot be rebuilt here" in message
    assert "NeedsTwo: first" in message  # the remote traceback is kept


def test_every_rayd_error_is_a_ray_error_with_its_message():
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, exceptions.RayError)
    assert issubclass(exceptions.RayletConnectionError, exceptions.RaySystemError)
    assert issubclass(exceptions.GetTimeoutError, TimeoutError)


def test_the_package_is_typed_and_checks_a_users_program(tmp_path):
    package = os.path.dirname(ray.__file__)
    assert os.path.exists(os.path.join(package, "py.typed"))
    assert os.path.exists(os.path.join(package, "_raylet.pyi"))
    program = tmp_path / "typed_program.py"
    program.write_text(
        "from typing import List, Tuple\n"
        "import ray\n"
        "ref: ray.ObjectID = ray.put(1)\n"
        "values: List[int] = ray.get([ref])\n"
        "ready: Tuple[List[ray.ObjectID], List[ray.ObjectID]] = ray.wait([ref], timeout=1.5)\n"
        "ray.get('not an id')\n"
        "number: int = ray.get(ray.put(1))\n"
        "text: str = ray.get(ray.put(2))\n"
        "typed_ref: ray.ObjectRef[int] = ray.put(3)\n")
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", str(program)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    # Exactly the wrong lines are reported: ray.get of a str, and an int read as a str.
    assert out.returncode == 1, out.stdout + out.stderr
    assert 'typed_program.py:6: error: Argument 1 to "get" has incompatible type "str"' in out.stdout, out.stdout
    assert 'typed_program.py:8: error: Incompatible types in assignment (expression has type "int", ' \
        'variable has type "str")' in out.stdout, out.stdout
    assert "Found 2 errors" in out.stdout, out.stdout
    # ObjectRef[T] is also valid at run time, as in today's Ray.
    assert ray.ObjectRef[int] is ray.ObjectRef
