"""`dcsim sweep --scheduler`: the same points on a real dask.distributed LocalCluster give exactly the
results of the local process pool, and a sweep split between the two resumes across them."""

from __future__ import annotations

import pandas as pd
import pytest
from test_sweep import GRID, make_case, write_sweep

from dcsim.cli import main
from dcsim.sweep import load_sweep, run_sweep

distributed = pytest.importorskip("dask.distributed",
                                  reason="dask[distributed] not installed (pip install -e '.[dask]')")


@pytest.fixture(scope="module")
def cluster():
    # threads in this process: starts in about a second; the workers import dcsim like any client would
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c


def test_dask_equals_local_pool(tmp_path, cluster, capsys):
    make_case(tmp_path)
    sw_file = write_sweep(tmp_path, GRID)
    rc = main(["sweep", str(sw_file), "--out", str(tmp_path / "dask"), "--scheduler", cluster.scheduler_address,
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "12 points: 12 run now" in capsys.readouterr().out
    local = run_sweep(load_sweep(sw_file), tmp_path / "local", workers=2, progress=False)
    dask = pd.read_parquet(tmp_path / "dask" / "results.parquet")
    assert len(dask) == 12 and dask["e2e_s.p99"].nunique() == 12
    pd.testing.assert_frame_equal(dask, local.results, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dask" / "summary.parquet"), local.summary,
                                  check_exact=True)


def test_resume_on_dask_after_local_half(tmp_path, cluster):
    make_case(tmp_path)
    sw = load_sweep(write_sweep(tmp_path, GRID))
    out = tmp_path / "out"
    run_sweep(sw, out, workers=0, progress=False)
    files = sorted((out / "points").glob("*.json"))
    for f in files[:5]:
        f.unlink()
    kept = {f: f.stat().st_mtime_ns for f in files[5:]}
    res = run_sweep(sw, out, scheduler=cluster.scheduler_address, progress=False)
    assert (res.ran, res.reused) == (5, 7)
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())
    assert len(res.results) == 12


def test_failed_point_on_dask_is_reported_and_others_kept(tmp_path, cluster):
    """Points whose trace is empty pass validation (traces are not read then) and fail on the worker;
    the other points finish, are kept, and the error names the failures."""
    from simkit import write_trace

    from dcsim.errors import UserError

    make_case(tmp_path)
    write_trace(tmp_path, [], [], name="empty.parquet")
    sw = load_sweep(write_sweep(tmp_path, {"base": "base.yaml", "seeds": [1, 2],
                                           "grid": {"trace.path": ["trace.parquet", "empty.parquet"]}}))
    with pytest.raises(UserError) as e:
        run_sweep(sw, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False)
    assert "2 of 4 points failed" in e.value.message and "the trace holds no requests" in e.value.message
    assert "empty.parquet" in e.value.message
    assert len(list((tmp_path / "out" / "points").glob("*.json"))) == 2
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_unreachable_scheduler_is_a_user_error_and_writes_nothing(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a local port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_case(tmp_path)
    sw_file = write_sweep(tmp_path, GRID)
    rc = main(["sweep", str(sw_file), "--out", str(tmp_path / "out"), "--scheduler", f"tcp://127.0.0.1:{port}",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "field '--scheduler': cannot reach the Dask scheduler" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
