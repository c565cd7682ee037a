"""Random option values thrown at `compare`, `report`, `plot`, `props` and `bench-kernels`: the exit
code is 0 or 2 and nothing escapes as a traceback. The expensive steps (the sweep, the property
table, the timed benchmark) are replaced by stubs after the request has been checked; their own
tests cover them."""

import sqlite3

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptact.analysis as A
from adaptact.experiments import comparison as C
from adaptact import kernel_benchmark as K
from adaptact.experiments.sweep import SweepSummary
from adaptact.cli import main

pytest.importorskip("sklearn")

NUMBERS = ["0", "-1", "1", "2", "3", "1e20", "1e-3", "nan", "inf", "-inf", "1.5", "abc", "", "1,2", ",",
           "99999999"]
WORDS = ["relu", "acon_c", "acon_x", "sgd", "adam", "rmsprop", "digits", "mnist", "cpu", "cuda", "meta",
         "bogus", "float32", "bfloat16", "int8", "2,4,5,5", "2", "0,4", "resnet", "ray", "local",
         "127.0.0.1:1", "-x", "arelu", "bearing", "bearing-snr3", "resnet1d-6"]
PATHS = ["{tmp}/db.sqlite", "{tmp}/garbage.sqlite", "{tmp}/foreign.sqlite", "{tmp}/out", "{tmp}/file.txt",
         "{tmp}/file.txt/sub", "{tmp}/nowhere/x.png", "{tmp}/p.png", "{tmp}/ckpt.pt", "/proc/nope", ".."]
VALUES = st.sampled_from(NUMBERS + WORDS + PATHS) | st.text(max_size=8)

OPTIONS = {
    "compare": ["--protocol", "--snr", "--dataset", "--suite", "--model", "--activations", "--optimizers",
                "--lrs", "--seeds", "--epochs", "--batch-size", "--workers", "--executor", "--address",
                "--data-dir", "--db", "--out", "--save-checkpoints"],
    "report": ["--db", "--out", "--dataset"],
    "plot": ["--checkpoint", "-o"],
    "props": ["--depth", "--format"],
    "bench-kernels": ["--shape", "--dtypes", "--device", "--repeats", "--json", "--activations", "--threads",
                      "--channel-dim", "--context"],
}
POSITIONAL = {"plot": True, "props": True}


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "garbage.sqlite").write_bytes(b"not a database")
    (tmp / "file.txt").write_text("a file")
    (tmp / "ckpt.pt").write_bytes(b"\x80\x04garbage")
    with sqlite3.connect(tmp / "foreign.sqlite") as con:
        con.execute("CREATE TABLE runs (x)")
    return tmp


@pytest.fixture(scope="module")
def stubs(playground):
    """The work after the checks, replaced: results of the right shape, instantly; default output
    paths land in the playground."""
    mp = pytest.MonkeyPatch()
    mp.chdir(playground)
    mp.setattr(C, "run_sweep", lambda configs, *a, **k: SweepSummary(len(configs), 0, 0))
    mp.setattr(A, "property_table", lambda names, cost=True, depth=20: (("name",), [(n,) for n in names]))

    def measured_nothing(shape, dtypes, dev, activations, backends, repeats, channel_dim, context):
        return {"device": "stub", "device_type": "cpu", "shape": list(shape), "copy_bandwidth_GBps": 1.0,
                "channel_dim": channel_dim, "context": context, "torch": torch.__version__, "results": []}

    mp.setattr(K, "_bench", measured_nothing)  # every check of run_kernel_bench runs, nothing is timed
    yield
    mp.undo()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(OPTIONS)), data=st.data())
def test_random_options_exit_0_or_2_never_a_traceback(command, data, playground, stubs, capsys):
    argv = [command]
    if POSITIONAL.get(command):
        argv += data.draw(st.lists(st.sampled_from(WORDS[:3] + ["swish", "prelu"]), max_size=2))
    for option in data.draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=5, unique=True)):
        argv += [option, data.draw(VALUES).replace("{tmp}", str(playground))]
    if command == "compare":
        argv += ["--no-progress"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad option (2)
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
