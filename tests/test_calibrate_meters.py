"""Meters: the powermetrics parser on real samples, RAPL wraparound arithmetic, the power timeline's
integral, and that calibrate's code never needs the simulator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dcsim.calibrate.meters import Meter
from dcsim.calibrate.meters.powermetrics import PowerSample, energy_j, parse_powermetrics, window_energy_j
from dcsim.calibrate.meters.rapl import RaplCounter, RaplMeter, rapl_zones, wrap_delta_uj
from dcsim.calibrate.meters.registry import select_meter
from dcsim.calibrate.timeline import PowerTimeline
from dcsim.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_powermetrics_parser_on_real_m1_samples(sample_data):
    # the whole published file (tests/data/powermetrics-samples: a copy, byte for byte)
    text = (sample_data / "powermetrics-samples" / "macbookair10-1_macos12.txt").read_text()
    s = parse_powermetrics(text)
    assert len(s) == 10  # ten "Sampled system activity" blocks
    # every block's "(104.51ms elapsed)" and "Package Power: 1473 mW", read from the text with a plain regex
    elapsed = [float(x) / 1e3 for x in re.findall(r"\*\*\* Sampled system activity .*\(([\d.]+)ms elapsed\)", text)]
    package = [float(x) / 1e3 for x in re.findall(r"^Package Power: (\d+) mW$", text, re.M)]
    assert [x.elapsed_s for x in s] == pytest.approx(elapsed) and len(elapsed) == 10
    assert [x.watts["package"] for x in s] == pytest.approx(package) and len(package) == 10
    first = s[0]
    assert first.elapsed_s == pytest.approx(0.10451)
    assert first.watts == pytest.approx({"e-cluster": 0.105, "p-cluster": 0.842, "ane": 0.0, "dram": 0.220,
                                         "cpu": 0.947, "gpu": 0.153, "package": 1.473})
    assert s[1].watts["package"] == pytest.approx(0.773) and s[1].elapsed_s == pytest.approx(0.10481)
    assert s[-1].watts["package"] == pytest.approx(0.321) and s[-1].watts["gpu"] == pytest.approx(0.009)
    # per-core lines ("CPU 0 frequency") and indented text are not rails
    assert all(set(x.watts) == set(first.watts) for x in s)
    # energy of the first two samples by hand: 1.473 W x 0.10451 s + 0.773 W x 0.10481 s
    assert energy_j(s[:2], "package") == pytest.approx(1.473 * 0.10451 + 0.773 * 0.10481)


def test_powermetrics_window_prorates_samples():
    # samples of 0.1 s ending at 1.1, 1.2, 1.3 with 10, 20, 30 W on the gpu rail
    s = [PowerSample("", 0.1, {"gpu": w}, t_end=t) for w, t in ((10, 1.1), (20, 1.2), (30, 1.3))]
    # window [1.05, 1.25]: half of the first (0.5 J), all of the second (2 J), half of the third (1.5 J)
    assert window_energy_j(s, "gpu", 1.05, 1.25) == pytest.approx(0.5 + 2.0 + 1.5)


def test_rapl_wraparound_arithmetic():
    rng = 262143328850  # a real max_energy_range_uj of an Intel package zone
    assert wrap_delta_uj(1000, 5000, rng) == 4000
    assert wrap_delta_uj(rng - 1000, 500, rng) == 1500  # wrapped once
    assert wrap_delta_uj(7, 7, rng) == 0


def _zone(root: Path, name: str, energy: int, max_range: int, sub: str | None = None) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(f"{energy}\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    (z / "name").write_text(f"{sub or 'package-0'}\n")
    return z


def test_rapl_counter_accumulates_across_several_wraps(tmp_path):
    # A powercap tree written to disk (this machine has no /sys/class/powercap), read by the real reader.
    z = _zone(tmp_path, "intel-rapl:0", 900, 1000)
    c = RaplCounter(z)
    total = 0
    for raw, step in ((950, 50), (100, 150), (600, 500), (20, 420), (999, 979)):
        (z / "energy_uj").write_text(f"{raw}\n")
        total += step
        assert c.update() == total  # 3 wraps in all, 2099 uJ


def test_rapl_meter_reports_package_and_dram(tmp_path):
    pkg = _zone(tmp_path, "intel-rapl:0", 1_000_000, 10_000_000)
    dram = _zone(pkg, "intel-rapl:0:0", 500, 10_000_000, sub="dram")
    _zone(tmp_path, "intel-rapl:0:1", 0, 10, sub="core")  # a subzone at top level is not a package
    assert [p.name for p in rapl_zones(tmp_path)] == ["intel-rapl:0"]
    m = RaplMeter(root=tmp_path, poll_s=60)
    try:
        m.begin("w")
        (pkg / "energy_uj").write_text("3000000\n")  # +2 J
        (dram / "energy_uj").write_text("2500500\n")  # +2.5 J
        r = m.end("w")
    finally:
        m.close()
    assert r.device_j == pytest.approx({"cpu0": 2.0, "dram0": 2.5})


def test_timeline_integral_by_hand(tmp_path):
    tl = PowerTimeline(lambda: {"gpu0": 100.0}, tmp_path / "power.csv")
    # samples placed by hand: 100 W at t=0, 200 W at t=1, 200 W at t=2
    tl.samples.extend([(0.0, {"gpu0": 100.0}), (1.0, {"gpu0": 200.0}), (2.0, {"gpu0": 200.0})])
    # [0.5, 2]: trapezoid from 150 W at 0.5 to 200 W at 1 (87.5 J) plus 200 W for 1 s
    assert tl.energy_j(0.5, 2.0)["gpu0"] == pytest.approx(87.5 + 200.0)
    # a window past the last sample holds the last value: [1.5, 3] = 1.5 s x 200 W
    assert tl.energy_j(1.5, 3.0)["gpu0"] == pytest.approx(300.0)


def test_no_meter_is_a_clear_error_unless_latency_only():
    here = Path("/sys/class/powercap")
    readable = bool(rapl_zones(here))
    if readable:
        pytest.skip("this machine has readable RAPL zones")
    # CI and the development machines have no /sys/class/powercap (checked: absent), no GPU, not macOS
    with pytest.raises(UserError) as e:
        select_meter("cpu")
    assert "--latency-only" in e.value.message and "RAPL" in e.value.message
    assert type(select_meter("cpu", latency_only=True)) is Meter


def test_calibrate_never_imports_the_simulator():
    code = ("import sys; sys.modules['simpy'] = None\n"
            "import dcsim.commands.calibrate, dcsim.calibrate.run, dcsim.calibrate.backends.hf, "
            "dcsim.calibrate.backends.endpoint, dcsim.calibrate.meters.zeus_meter, dcsim.calibrate.powercap\n"
            "assert not any(m.startswith('dcsim.sim') for m in sys.modules), sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_timeline_keeps_temperature_beside_power_once_a_second(tmp_path):
    """A meter that reads a temperature gets temperature.csv at temp_interval_s, labelled like power.csv; one that
    reads none (RAPL, powermetrics, no meter) writes no such file. The read functions stand in for a GPU's NVML
    fields, which this machine lacks."""
    import time

    import pandas as pd

    temps = iter(range(40, 1000))
    tl = PowerTimeline(lambda: {"gpu0": 100.0}, tmp_path / "power.csv", 0.01,
                       read_temp=lambda: {"gpu0": float(next(temps))}, temp_interval_s=0.1).start()
    tl.label = "run-a"
    time.sleep(0.55)
    tl.stop()
    t = pd.read_csv(tmp_path / "temperature.csv")
    p = pd.read_csv(tmp_path / "power.csv")
    assert list(t.columns) == ["t", "device", "temp_c", "label"]
    # one reading at start() (to see whether there is a sensor), then one per 0.1 s: 5 or 6 rows in 0.55 s
    assert 4 <= len(t) <= 7 and len(p) >= 4 * len(t)
    assert t["temp_c"].tolist() == [41.0 + i for i in range(len(t))]
    assert set(t["label"].fillna("")) <= {"", "run-a"}
    assert (t["t"].diff().dropna() >= 0.095).all()
    none = PowerTimeline(lambda: {"gpu0": 100.0}, tmp_path / "b" / "power.csv", 0.01, read_temp=lambda: {})
    (tmp_path / "b").mkdir()
    none.start()
    none.stop()
    assert not (tmp_path / "b" / "temperature.csv").exists()


def test_meters_register_themselves_and_no_vendor_library_loads_with_them():
    code = ("import sys; from dcsim.calibrate.meters.registry import METERS; "
            "print(sorted(METERS), [m for m in ('zeus', 'pynvml', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['powermetrics', 'rapl', 'zeus'] []"


VENDOR_METERS = ("zeus_meter", "rapl", "powermetrics")


def test_the_meter_interface_loads_no_vendor_meter_and_each_meter_loads_first():
    """No import cycle between the interface and the vendor meters: the base (and the package) load no vendor
    meter and no registry, and each vendor module imported first in a fresh interpreter loads whole."""
    pkg = "dcsim.calibrate.meters"
    for first in (f"{pkg}.base", pkg):
        code = (f"import sys, {first}; print(sorted(m for m in sys.modules if m.startswith('{pkg}.')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"['{pkg}.base']", first
    for name in VENDOR_METERS:
        code = (f"import {pkg}.{name}; from {pkg}.base import METERS; "
                "print([c.__module__ for c in METERS.values()])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"['{pkg}.{name}']"
