"""The tracker seam (a new quantity is one module and its registration) and the energy tracker: RAPL
against a fake powercap tree, NVML against a fake counter, and no energy metric on a machine without
either (a VM like this one) but a tag saying why."""

import re
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pytest

from conftest import compose_run
from qsweep import charts, job, report, report_rows, trackers
from qsweep.trackers import energy
from qsweep.tracking import TAG_ENERGY_SOURCE, TAG_ENERGY_UNAVAILABLE

ENERGY_METRICS = [f.name for f in fields(energy.EnergyMetrics) if f.name != "tags"]
PER_TOKEN = ("energy_j", "energy_per_output_token_j", "energy_per_token_j", "avg_power_w", "tokens_per_joule")
RANGE_UJ = 262_143_328_850  # a real package domain's max_energy_range_uj


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Counters are fakes here: no need to wait for real updates."""
    monkeypatch.setattr(energy, "IDLE_S", 0.01)
    monkeypatch.setattr(energy, "MIN_WINDOW_S", 0.05)


def powercap(root: Path, zones: dict) -> Path:
    """A flat powercap tree as Linux shows it: {zone folder: (domain name, energy_uj)}."""
    for zone, (name, uj) in zones.items():
        folder = root / zone
        folder.mkdir(parents=True)
        (folder / "name").write_text(f"{name}\n")
        (folder / "energy_uj").write_text(f"{uj}\n")
        (folder / "max_energy_range_uj").write_text(f"{RANGE_UJ}\n")
    return root


def set_uj(root: Path, zone: str, uj: int) -> None:
    (root / zone / "energy_uj").write_text(f"{uj}\n")


def measure(tracker, work_tokens=(30, 40), during=lambda: None, seconds=0.06):
    """The tracker around a job's region whose timed part counts `work_tokens` (prompt, output)."""
    work = trackers.Work()
    with tracker.track():
        with tracker.timed(work):
            work.count(*work_tokens)
            during()
            time.sleep(seconds)
    return tracker.result()


# --------------------------------------------------------------------------- RAPL (CPU)

def tree(tmp_path):
    return powercap(tmp_path / "powercap", {"intel-rapl:0": ("package-0", RANGE_UJ - 1_000_000),
                                            "intel-rapl:0:0": ("core", 10), "intel-rapl:0:2": ("dram", 5_000_000),
                                            "intel-rapl:1": ("psys", 10)})


def test_rapl_sums_package_and_dram_across_a_wrap_around(tmp_path):
    root = tree(tmp_path)

    def burn():  # package-0 passes max_energy_range_uj: +3 J; dram +1 J; core and psys overlap them: ignored
        set_uj(root, "intel-rapl:0", 2_000_000)
        set_uj(root, "intel-rapl:0:2", 6_000_000)
        set_uj(root, "intel-rapl:0:0", 10**9)
        set_uj(root, "intel-rapl:1", 10**9)

    result = measure(energy.EnergyTracker("cpu", powercap=root), during=burn)
    assert result.energy_j == pytest.approx(4.0)
    assert result.energy_per_output_token_j == pytest.approx(4.0 / 40)
    assert result.energy_per_token_j == pytest.approx(4.0 / 70)
    assert result.tokens_per_joule == pytest.approx(10.0)
    assert 4.0 / 30 < result.avg_power_w <= 4.0 / 0.06  # joules over the window's wall time (>= the 0.06 s sleep)
    assert result.idle_power_w == 0.0 and result.power_limit_w is None  # the fake did not move while idle
    assert result.tags == {TAG_ENERGY_SOURCE: "rapl intel-rapl:0(package-0),intel-rapl:0:2(dram)"}


def test_an_unreadable_rapl_file_records_no_energy_metric_and_says_why(tmp_path, monkeypatch):
    root = tree(tmp_path)
    blocked, read_text = root / "intel-rapl:0:2" / "energy_uj", Path.read_text

    def refuse(path, *args, **kwargs):  # what a non-root user gets since Linux 5.10 (root ignores chmod)
        if path == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    result = measure(energy.EnergyTracker("cpu", powercap=root))
    assert all(value is None for value in result.metrics().values())
    assert result.tags == {TAG_ENERGY_UNAVAILABLE: f"RAPL counter unreadable: {blocked}: Permission denied "
                                                   "(RAPL counters are readable by root only since Linux 5.10)"}


def test_no_powercap_tree_records_no_energy_metric(tmp_path):
    result = measure(energy.EnergyTracker("cpu", powercap=tmp_path / "absent"))
    assert all(value is None for value in result.metrics().values())
    assert result.tags[TAG_ENERGY_UNAVAILABLE].startswith(f"no RAPL package domain under {tmp_path / 'absent'}")


def test_a_short_window_or_a_still_counter_gives_no_per_token_figure(tmp_path, monkeypatch):
    root = tree(tmp_path)
    result = measure(energy.EnergyTracker("cpu", powercap=root), seconds=0.06)  # the counters never move
    assert all(getattr(result, name) is None for name in PER_TOKEN) and result.idle_power_w == 0.0
    assert re.fullmatch(r"the energy counter did not move during the \d+\.\d\d s of timed generations",
                        result.tags[TAG_ENERGY_UNAVAILABLE])
    monkeypatch.setattr(energy, "MIN_WINDOW_S", 60)  # a window shorter than that on any machine
    result = measure(energy.EnergyTracker("cpu", powercap=root), seconds=0.0,
                     during=lambda: set_uj(root, "intel-rapl:0", 0))
    assert all(getattr(result, name) is None for name in PER_TOKEN)
    assert "under the 60 s an energy counter needs: raise generation.repeats" in result.tags[TAG_ENERGY_UNAVAILABLE]


# --------------------------------------------------------------------------- NVML (GPU), a fake counter

@pytest.fixture
def fake_nvml(monkeypatch):
    import pynvml

    class Fake:
        energy_mj, power_mw, limit_mw, supported = 1_000_000, 75_000, 700_000, True

        def energy(self, handle):
            assert handle == "gpu0"
            if not self.supported:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return self.energy_mj

    fake = Fake()
    monkeypatch.setattr(energy, "nvml_handle", lambda: "gpu0")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", fake.energy)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", lambda handle: fake.power_mw)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetEnforcedPowerLimit", lambda handle: fake.limit_mw)
    return fake


def test_nvml_energy_over_the_timed_generations(fake_nvml):
    def burn():
        fake_nvml.energy_mj += 12_000  # 12 J in millijoules

    result = measure(energy.EnergyTracker("cuda"), work_tokens=(100, 200), during=burn)
    assert result.energy_j == pytest.approx(12.0) and result.energy_per_output_token_j == pytest.approx(0.06)
    assert result.energy_per_token_j == pytest.approx(0.04) and result.tokens_per_joule == pytest.approx(200 / 12)
    assert result.idle_power_w == 75.0 and result.power_limit_w == 700.0
    assert result.tags == {TAG_ENERGY_SOURCE: "nvml"}


def test_a_gpu_without_power_readings_still_gives_its_energy(fake_nvml, monkeypatch):
    import pynvml

    def not_supported(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", not_supported)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetEnforcedPowerLimit", not_supported)

    def burn():
        fake_nvml.energy_mj += 3_000

    result = measure(energy.EnergyTracker("cuda"), during=burn)
    assert result.energy_j == pytest.approx(3.0) and result.idle_power_w is None and result.power_limit_w is None


def test_nvml_without_an_energy_counter_or_a_driver_says_why(fake_nvml, monkeypatch):
    fake_nvml.supported = False  # before Volta
    result = measure(energy.EnergyTracker("cuda"))
    assert all(value is None for value in result.metrics().values())
    assert result.tags == {TAG_ENERGY_UNAVAILABLE: "this GPU has no NVML total-energy counter (Not Supported; "
                                                   "Volta and newer have one)"}
    monkeypatch.setattr(energy, "nvml_handle", lambda: None)
    assert measure(energy.EnergyTracker("cuda")).tags[TAG_ENERGY_UNAVAILABLE].startswith("NVML unavailable")


# --------------------------------------------------------------------------- the seam, in a real job

@dataclass
class ToyMetrics(trackers.Result):
    toy_output_tokens: float = field(metadata=trackers.column("Toy tokens", 1, chart="toy tokens (a test's)"))
    toy_region_s: float


class ToyTracker(trackers.Tracker):
    """A new quantity: this class and its registration, nothing else."""
    devices = ("cpu",)
    result_type = ToyMetrics

    def track(self):
        self.began = time.perf_counter()
        return super().track()

    def timed(self, work):
        self.work = work
        return super().timed(work)

    def result(self):
        return ToyMetrics(self.work.output_tokens, time.perf_counter() - self.began, tags={"toy_tracker": "ran"})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny-gpt2 job with the default isolation (a worker from the fork server), with the toy tracker
    registered in this process: its MLflow RunRecord."""
    store = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trackers, "REGISTRY", list(trackers.REGISTRY))
        trackers.register(ToyTracker)
        cfg = compose_run("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=6",
                          "generation.repeats=1", f"tracking.uri=sqlite:///{store / 'mlflow.db'}")
        record = job.run_job(cfg)
    assert record.status == "FINISHED", record.tags.get("error")
    return record, cfg


def test_a_registered_tracker_s_fields_become_metrics_of_the_run(tiny_run):
    record, cfg = tiny_run
    outputs = record.metrics["timed_samples"] * cfg.generation.batch_size * cfg.generation.max_new_tokens
    assert record.metrics["toy_output_tokens"] == outputs and record.metrics["toy_region_s"] > 0
    assert record.tags["toy_tracker"] == "ran"
    assert record.metrics["peak_rss_gb"] > 0  # the memory tracker runs on the same seam


def test_a_registered_tracker_s_declared_fields_become_report_columns_and_charts(tiny_run, monkeypatch, tmp_path):
    record, _ = tiny_run

    def main_table():
        header, _, first = report.summary([record]).splitlines()[2:5]
        return dict(zip(*([c.strip() for c in line.strip("|").split("|")] for line in (header, first))))

    assert "Toy tokens" not in main_table()  # not registered (the fixture's registration has ended)
    monkeypatch.setattr(trackers, "REGISTRY", list(trackers.REGISTRY))
    trackers.register(ToyTracker)
    table = main_table()
    assert table["Toy tokens"] == f"{record.metrics['toy_output_tokens']:.1f}"  # declared: header, decimals
    assert "toy_region_s" not in str(table) and "J/token" not in table  # undeclared; no energy on this VM
    judged = replace(record, metrics={**record.metrics, "kl_div_vs_fp32": 0.0})  # a quality figure to chart against
    made = charts.model_charts("tiny-gpt2", report_rows.rows_by_model([judged])["tiny-gpt2"], tmp_path)
    assert made[-1].path.name == "tiny-gpt2_toy_output_tokens_vs_quality.png"
    assert made[-1].path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(bool(list(energy.POWERCAP.glob("intel-rapl:*"))), reason="this machine exposes RAPL")
def test_a_cpu_job_here_records_no_energy_metric_and_why(tiny_run):
    record, _ = tiny_run
    assert not set(ENERGY_METRICS) & set(record.metrics)
    assert record.tags[TAG_ENERGY_UNAVAILABLE] == ("no RAPL package domain under /sys/class/powercap (virtual "
                                                   "machines expose none; elsewhere the intel_rapl driver is not "
                                                   "loaded)")
    assert TAG_ENERGY_SOURCE not in record.tags


def test_a_tracker_an_isolated_worker_could_not_import_is_refused_when_registered(monkeypatch):
    monkeypatch.setattr(trackers, "REGISTRY", list(trackers.REGISTRY))

    class Local(ToyTracker):
        pass

    with pytest.raises(ValueError, match=r"register\(.*Local\): define the tracker at the top level of an importable"):
        trackers.register(Local)
    assert Local not in trackers.REGISTRY


def test_a_job_runs_only_the_trackers_its_device_supports(monkeypatch):
    monkeypatch.setattr(trackers, "REGISTRY", list(trackers.REGISTRY))
    trackers.register(ToyTracker)

    def running(device):
        return [type(tracker) for tracker in trackers.Trackers(device).running]

    assert running("cpu") == [trackers.memory.MemoryTracker, energy.EnergyTracker, ToyTracker]
    assert running("cuda") == [trackers.memory.MemoryTracker, energy.EnergyTracker]
