"""Benchmark results name paths inside the repository relative to it, not where one machine keeps it."""

import json
from pathlib import Path

from unziplora.bench import SOURCE_ROOT, write_report
from unziplora.models.embedded import EMBEDDED_MODEL

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_a_report_records_repository_relative_paths(tmp_path):
    report = {"base_model": str(EMBEDDED_MODEL.resolve()), "runs": [str(SOURCE_ROOT / "runs" / "bench" / "a")],
              "elsewhere": "/tmp/scratch", "name": "speed"}
    write_report(tmp_path / "r.json", report)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written == {"base_model": "src/unziplora/assets/toyworld-sdxl", "runs": ["runs/bench/a"],
                       "elsewhere": "/tmp/scratch", "name": "speed"}


def test_the_committed_results_hold_no_machine_paths():
    for path in RESULTS.glob("*.json"):
        absolute = [s for s in _strings(json.loads(path.read_text())) if s.startswith("/") and "unziplora" in s]
        assert not absolute, f"{path.name}: {absolute}"
