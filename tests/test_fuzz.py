"""Property-based tests of bad input (hypothesis): scenarios generated from the scenario schema (wrong types,
out-of-range and non-finite numbers, unknown keys, odd YAML scalars, odd encodings), traces in CSV and Parquet
with odd columns and values, and calibration runs.csv files.

The property, for every command run: it exits 0 and every JSON it wrote or printed is strict (no NaN, no
Infinity), or it exits 2 with one `dcsim: error:` message. It never raises (no traceback), never leaves a
partial output folder or a temporary file, and never changes or removes a file it did not write.

The example budget is fixed and the examples are derandomised (a fixed seed), so CI stays fast and gives the
same examples every time; DCSIM_FUZZ_EXAMPLES=N runs N examples of each test instead (e.g. 2000 for a longer
search, which also draws new examples: set DCSIM_FUZZ_SEED to vary them)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, seed, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pydantic import BaseModel
from simkit import profile_dict, write_trace

from dcsim.cli import main
from dcsim.scenario import Scenario
from dcsim.sim.batching import POLICIES

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "calibrate" / "runs" / "h100-llama-2-7b-hf"
_N = int(os.environ.get("DCSIM_FUZZ_EXAMPLES", "0") or 0)
_SEED = int(os.environ.get("DCSIM_FUZZ_SEED", "20260") or 20260)


def budget(n: int):
    """hypothesis settings: n examples (or DCSIM_FUZZ_EXAMPLES), repeatable, no example database."""
    return settings(max_examples=_N or n, derandomize=not _N, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])


# ---- the property --------------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder: relative path -> digest of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _strict(text: str) -> object:
    def bad(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=bad)


def check(args: list[str], work: Path, outputs: tuple[Path, ...] = (), json_stdout: bool = False) -> int:
    """Run the CLI in-process and assert the property; `outputs` are the paths the command may create."""
    before = snapshot(work)
    fresh = [o for o in outputs if not o.exists()]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as e:  # argparse
            rc = e.code
    e = err.getvalue()
    if currently_in_test_context():  # pytest --hypothesis-show-statistics: how many got past the checks
        event(f"{args[0]} exit {rc}")
    assert rc in (0, 2), (rc, e)
    assert "Traceback" not in e, e
    after = snapshot(work)
    for k, v in before.items():  # files it did not write: there, unchanged
        assert after.get(k) == v, f"{k} was changed or removed ({args})"
    new = sorted(set(after) - set(before))
    mine = [o.relative_to(work).as_posix() for o in outputs]
    if rc == 2:
        lines = [ln for ln in e.splitlines() if ln.startswith("dcsim: error: ")]
        assert len(lines) == 1 and e.rstrip("\n").splitlines()[-1] == lines[0], e
        assert not new, f"a failed command left {new}"
        for o in fresh:
            assert not o.exists(), f"a failed command left {o}"
    else:
        stray = [n for n in new if not any(n == m or n.startswith(m + "/") for m in mine)]
        assert not stray, f"files written outside the outputs: {stray}"
        for n in new:
            if n.endswith(".json"):
                _strict((work / n).read_text())
        if json_stdout:
            _strict(out.getvalue())
    return rc


# ---- odd values ------------------------------------------------------------------------------------------------
class Raw(str):
    """A YAML scalar written into the file as it is (`.inf`, `1e400`, an alias), not as a quoted string."""


RAW = [".inf", "-.inf", ".nan", ".NaN", "1e400", "-1e400", "0x1F", "0o17", "1_000", "~", "null", "yes", "no",
       "2001-12-14", "!!binary aGVsbG8=", "*nowhere", "&a [1, *a]", "[&b {x: 1}, *b]", "'5'", "{}", "[]", "''",
       "!!python/object:os.system [echo]", "1e-400", "-0.0", "9" * 40, "\"\\u0000\"", "\"\\uD800\""]

nasty = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=2),
    st.sampled_from(RAW).map(Raw),
)


def _unwrap(ann):
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    return ann


def plausible(ann) -> st.SearchStrategy:
    """Values of a field's type, in and just out of its range (wrong types come from `nasty`)."""
    ann = _unwrap(ann)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is bool:
        return st.booleans()
    if ann is int:
        return st.one_of(st.integers(-2, 40), st.sampled_from([0, 1, 256, 4096, 10 ** 6, 2 ** 63]))
    if ann is float:
        return st.one_of(st.floats(-2.0, 100.0), st.sampled_from([0.0, 1e-9, 0.5, 1.0, 1e6, 1e308, -1.0]))
    if ann is str:
        return st.one_of(st.text(max_size=10), st.sampled_from(["round_robin", "paged", "fcfs", "", "."]))
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return st.one_of([st.none() if a is type(None) else plausible(a) for a in args])
    if origin is list:
        return st.lists(plausible(args[0]) if args else nasty, max_size=30)
    if origin is dict:
        return st.dictionaries(plausible(args[0]), plausible(args[1]), max_size=3)
    return nasty


def schema_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    """(dotted path, annotation) of every field of a pydantic model, through nested models, unions of models
    (each arrival kind) and lists of models (pool 0); a pool's batching gets every policy's own parameters."""
    out: list[tuple[str, object]] = []
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        out.append((path, f.annotation))
        ann = _unwrap(f.annotation)
        inner = [ann] + list(typing.get_args(ann))
        if typing.get_origin(ann) is list:
            inner = [typing.get_args(ann)[0]]
            path += ".0"
        for a in inner:
            for b in [_unwrap(a)] + [_unwrap(x) for x in typing.get_args(_unwrap(a))]:
                if isinstance(b, type) and issubclass(b, BaseModel):
                    out += schema_fields(b, path + ".")
        if name == "batching":
            for cls in POLICIES.values():
                out += schema_fields(cls.Params, path + ".")
    return out


FIELDS = schema_fields(Scenario)
VALID_ARRIVALS = [{"kind": "replay"}, {"kind": "poisson", "rate_per_s": 2.0}, {"kind": "gamma", "rate_per_s": 2.0,
                  "cv": 2.0}, {"kind": "diurnal", "mean_rate_per_s": 2.0, "day_s": 60.0}, {"kind": "all_at_once"}]
VALID_BATCHING = [{"policy": "fcfs"}, {"policy": "static", "max_batch": 4, "max_wait_s": 0.2},
                  {"policy": "continuous", "max_batch": 8}, {"policy": "paged", "max_num_seqs": 8}]


def _set(d: dict, path: str, value) -> None:
    parts = path.split(".")
    node = d
    for p in parts[:-1]:
        key = int(p) if isinstance(node, list) else p
        if isinstance(node, list):
            if key >= len(node):
                return
            if not isinstance(node[key], dict | list):
                node[key] = {}
            node = node[key]
        else:
            if not isinstance(node.get(key), dict | list):
                node[key] = {}
            node = node[key]
    last = parts[-1]
    if isinstance(node, list):
        if last.isdigit() and int(last) < len(node):
            node[int(last)] = value
    else:
        node[last] = value


def _delete(d: dict, path: str) -> None:
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) and p.isdigit() and int(p) < len(node) else (
            node.get(p) if isinstance(node, dict) else None)
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


@st.composite
def mutation(draw):
    kind = draw(st.sampled_from(["set", "set", "set", "nasty", "unknown", "delete"]))
    path, ann = draw(st.sampled_from(FIELDS))
    if kind == "set":
        return ("set", path, draw(plausible(ann)))
    if kind == "nasty":
        return ("set", path, draw(nasty))
    if kind == "unknown":
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        return ("set", (parent + "." if parent else "") + draw(st.sampled_from(["extra", "Seed", "kind2", "é"])),
                draw(nasty))
    return ("delete", path, None)


def dump_yaml(data: dict) -> str:
    """YAML text of data, with Raw scalars written unquoted."""
    raws: list[str] = []

    def walk(o):
        if isinstance(o, Raw):
            raws.append(str(o))
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(o, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    text = yaml.safe_dump(walk(data), sort_keys=False, allow_unicode=True)
    for i, r in enumerate(raws):
        text = text.replace(f"'@@RAW{i}@@'", r).replace(f"@@RAW{i}@@", r)
    return text


ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "crlf", "nul", "truncated", "cp1252"]


def encode(text: str, how: str, cut: int) -> bytes:
    if how == "crlf":
        return text.replace("\n", "\r\n").encode()
    if how == "nul":
        return text.encode()[:cut] + b"\x00" + text.encode()[cut:]
    if how == "truncated":
        return text.encode()[:cut]
    try:
        return text.encode(how)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory(prefix="dcsim-fuzz-") as d:
        w = Path(d)
        (w / "keep.txt").write_text("a file of the user's\n")
        yield w


def base_scenario(w: Path, arrivals: dict, batching: dict) -> dict:
    (w / "toy.yaml").write_text(yaml.safe_dump(profile_dict(kv_tokens=20_000, max_context=4096)))
    tr = write_trace(w, [50, 300, 20, 900, 120], [10, 40, 5, 200, 30], [0.0, 0.5, 0.5, 1.0, 3.0])
    return {"name": "fuzz", "seed": 1, "trace": {"path": tr.name}, "arrivals": arrivals,
            "fleet": [{"name": "gpu", "profile": "toy.yaml", "count": 2, "batching": batching}],
            "router": {"name": "least_outstanding"}, "facility": {"pue": 1.2}}


# ---- scenarios ---------------------------------------------------------------------------------------------
@seed(_SEED)
@budget(70)
@given(arrivals=st.sampled_from(VALID_ARRIVALS), batching=st.sampled_from(VALID_BATCHING),
       muts=st.lists(mutation(), max_size=3), enc=st.sampled_from(ENCODINGS), cut=st.integers(0, 400),
       mode=st.sampled_from(["json", "json", "out", "out-foreign", "set"]))
def test_fuzzed_scenarios(arrivals, batching, muts, enc, cut, mode):
    with workdir() as w:
        data = base_scenario(w, dict(arrivals), dict(batching))
        overrides = []
        for kind, path, value in muts:
            if kind == "delete":
                _delete(data, path)
            elif mode == "set":  # the same values given on the command line
                overrides += ["--set", f"{path}={dump_yaml({'v': value})[3:].strip()}"]
            else:
                _set(data, path, value)
        sc = w / "scenario.yaml"
        sc.write_bytes(encode(dump_yaml(data), enc, cut))
        out = w / "out"
        if mode == "out-foreign":  # a folder of the user's: refused, and left as it was
            out.mkdir()
            (out / "notes.txt").write_text("mine")
            rc = check(["run", str(sc), "--out", str(out), "--no-plots"], w)
            assert rc == 2
        elif mode == "out":
            rc = check(["run", str(sc), "--out", str(out), "--no-plots"], w, outputs=(out,))
            if rc == 0:
                assert {"summary.json", "requests.parquet", "replicas.csv", "power.csv"} <= {
                    p.name for p in out.iterdir()}
        else:
            check(["run", str(sc), "--json", *overrides], w, json_stdout=True)


def test_the_scenario_fuzzer_covers_the_schema():
    """The generated paths reach every arrival kind's and every policy's own fields (it is not fuzzing a few)."""
    paths = {p for p, _ in FIELDS}
    assert {"seed", "trace.sample", "arrivals.rate_per_s", "arrivals.cv", "arrivals.hourly", "arrivals.time_scale",
            "fleet.0.count", "fleet.0.power_cap_w", "fleet.0.cache_lengths", "fleet.0.batching.max_batch",
            "fleet.0.batching.kv_blocks", "fleet.0.batching.cudagraph_batch_sizes", "output_knowledge.mode",
            "facility.pue", "horizon_s", "warmup_s"} <= paths


# ---- traces ------------------------------------------------------------------------------------------------
COLUMNS = ["n_in", "n_out", "arrival_s", "source", "prefix_id", "prefix_len", "session_id", "extra", "N_IN", ""]
cell = st.one_of(st.integers(-3, 5000), st.integers(-(2 ** 64), 2 ** 64), st.floats(allow_nan=True,
                 allow_infinity=True), st.text(max_size=6), st.just(""), st.booleans(),
                 st.sampled_from(["1e400", "nan", "inf", "-0", "1,000", " 12", "0x10", '"', "None", "NULL"]))
ARROW = {"int64": (pa.int64(), st.integers(-(2 ** 63), 2 ** 63 - 1)),
         "small": (pa.int64(), st.integers(-2, 3000)),
         "float64": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
         "string": (pa.string(), st.text(max_size=6)),
         "bool": (pa.bool_(), st.booleans()),
         "null": (pa.null(), st.none())}


def column_values(draw, name: str, n: int, wild: st.SearchStrategy) -> list:
    """A column's values: mostly what the column should hold, with an odd cell or two; or wild throughout."""
    mode = draw(st.sampled_from(["good", "good", "good", "good", "one-odd", "wild"]))
    if mode == "wild":
        return [draw(wild) for _ in range(n)]
    if name == "arrival_s":
        vals = sorted(draw(st.lists(st.floats(0, 1e4), min_size=n, max_size=n)))
    elif name in ("source", "prefix_id", "session_id", "extra"):
        vals = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    elif name == "prefix_len":
        vals = draw(st.lists(st.integers(0, 400), min_size=n, max_size=n))
    else:
        vals = draw(st.lists(st.integers(1, 3000), min_size=n, max_size=n))
    if mode == "one-odd" and n:
        vals[draw(st.integers(0, n - 1))] = draw(wild)
    return vals


@st.composite
def trace_table(draw):
    """(rows, {column: values}) for a trace: the columns that matter most of the time, others beside them."""
    n = draw(st.integers(0, 6))
    names = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=4))
    if draw(st.integers(0, 3)):
        names = ["n_in", "n_out"] + (["arrival_s"] if draw(st.booleans()) else []) + names
    return n, names


@seed(_SEED)
@budget(60)
@given(shape=trace_table(), data=st.data(), fmt=st.sampled_from(["csv", "parquet"]),
       enc=st.sampled_from(ENCODINGS), cut=st.integers(0, 200), policy=st.sampled_from(["fcfs", "paged", "static"]),
       arrivals=st.sampled_from(["replay", "poisson"]))
def test_fuzzed_traces(shape, data, fmt, enc, cut, policy, arrivals):
    n, names = shape
    with workdir() as w:
        sc = base_scenario(w, {"kind": arrivals} if arrivals == "replay" else {"kind": "poisson", "rate_per_s": 3.0},
                           {"policy": policy})
        p = w / f"fuzzed.{fmt}"
        if fmt == "csv":
            cols = [column_values(data.draw, c, n, cell) for c in names]
            buf = io.StringIO()
            wr = csv.writer(buf)
            wr.writerow(names)
            for i in range(n):
                wr.writerow([c[i] for c in cols])
            p.write_bytes(encode(buf.getvalue(), data.draw(st.sampled_from(["utf-8", "utf-8", "utf-8", enc])), cut))
        else:
            arrays = {}
            for name in dict.fromkeys(names):  # Parquet columns have unique names
                kind = data.draw(st.sampled_from(["natural", "natural", *sorted(ARROW)]))
                if kind == "natural":
                    arrays[name] = pa.array(column_values(data.draw, name, n, st.none()))
                else:
                    typ, values = ARROW[kind]
                    arrays[name] = pa.array([data.draw(values) for _ in range(n)], type=typ)
            table = pa.table(arrays) if arrays else pa.table({"x": pa.array([], pa.int64())})
            meta = data.draw(st.sampled_from([None, b"{}", b'{"input": "x.csv"}', b"not json", b"[1]", b"\xff"]))
            if meta is not None:
                table = table.replace_schema_metadata({b"dcsim.provenance": meta})
            pq.write_table(table, p)
        check(["trace", "show", str(p), "--json"], w, json_stdout=True)
        check(["trace", "show", str(p)], w)
        sc["trace"] = {"path": p.name}
        (w / "scenario.yaml").write_text(yaml.safe_dump(sc))
        check(["run", str(w / "scenario.yaml"), "--json"], w, json_stdout=True)


# ---- runs.csv ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_rows():
    if not (RUN / "runs.csv").is_file():
        pytest.skip("the H100 calibration run is not in this checkout")
    with (RUN / "runs.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    return rows


runs_cell = st.one_of(st.sampled_from(["", "0", "-1", "nan", "inf", "-inf", "1e400", "fast", '"', "1,2", "ok", "error",
                                       "run", "idle_deep", "{}", "{\"gpu0\": \"x\"}", "[]", "1e-300", "999999999999"]),
                      st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=5))


@st.composite
def runs_edit(draw, n_rows: int, n_cols: int):
    kind = draw(st.sampled_from(["cell", "cell", "cell", "drop", "dup", "truncate", "garbage", "header"]))
    return (kind, draw(st.integers(1, n_rows - 1)), draw(st.integers(0, n_cols - 1)), draw(runs_cell),
            draw(st.integers(0, 19000)))


@seed(_SEED)
@budget(10)
@given(data=st.data(), enc=st.sampled_from(ENCODINGS), theirs=st.sampled_from([False, False, False, True]))
def test_fuzzed_runs_csv(run_rows, data, enc, theirs):
    rows = [list(r) for r in run_rows]
    edits = data.draw(st.lists(runs_edit(len(rows), len(rows[0])), min_size=1, max_size=3))
    with workdir() as w:
        d = w / "run"
        shutil.copytree(RUN, d)
        truncate = None
        for kind, i, j, value, at in edits:
            if kind == "cell":
                rows[i][j] = value
            elif kind == "drop" and len(rows[0]) > 1:
                for r in rows:
                    if j < len(r):
                        del r[j]
            elif kind == "dup":
                rows.insert(i, list(rows[i]))
            elif kind == "header":
                rows[0][j] = value
            elif kind == "garbage":
                rows.insert(i, [value])
            elif kind == "truncate":
                truncate = at
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        text = buf.getvalue()
        raw = encode(text, enc, truncate if truncate is not None else len(text))
        if truncate is not None and enc != "truncated":
            raw = raw[:truncate]
        (d / "runs.csv").write_bytes(raw)
        out = w / "p.yaml"
        if theirs:  # a file of the user's where the profile would go: refused, and left as it was
            out.write_text("name: my own notes\n")
        rc = check(["fit", str(d), "-o", str(out), "--no-plot"], w, outputs=(out,))
        assert not (theirs and rc == 0), "replaced a file dcsim did not write"
        if rc == 0:
            from dcsim.profiles.profile import load_profile

            load_profile(out)  # what it wrote is a valid profile (finite numbers, the schema)


# ---- what the fuzzers found, kept as plain tests ---------------------------------------------------------------
@pytest.mark.parametrize("cell", ["1e400", ""])
def test_a_session_trace_with_a_bad_token_count_is_refused_not_crashed(cell):
    """Session prefixes add token counts up: they are computed after the counts are checked."""
    with workdir() as w:
        (w / "t.csv").write_text(f"n_in,n_out,session_id\n{cell},1\n1,1,a\n".replace(",1\n", ",1,a\n", 1))
        assert check(["trace", "show", str(w / "t.csv")], w) == 2


def test_a_line_break_in_a_name_does_not_break_the_one_line_message():
    with workdir() as w:
        data = base_scenario(w, {"kind": "replay"}, {"policy": "fcfs"})
        data["fleet"][0]["profile"] = "two\nlines\x85\x1b[31m"
        (w / "s.yaml").write_text(yaml.safe_dump(data))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["run", str(w / "s.yaml")]) == 2
        assert err.getvalue().count("\n") == 1 and len(err.getvalue().splitlines()) == 1
        assert "two\\nlines\\x85\\x1b[31m" in err.getvalue()
