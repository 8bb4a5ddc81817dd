"""The soak benchmark's short version (issue 12, deliverable 1): 60 s of `endless play --model tiny`
with 8 slots on a JACK dummy server, a prompt change every 20 s from a control script, recording
on; then 60 s of the same script rendered offline. Runs benchmarks/soak.py as a user would.

What is asserted, and why not the benchmark's own targets:
- the recording is complete: as long as the run, within one block (live and offline);
- the main process's RSS grows at most 25 % from 30 s to the end. The target (5 %) is for the
  10-minute run: at 30 s of a 60 s set the tiny model's worker is still making the first clips of
  8 slots and torch's allocator is still growing, so 5 % over 30 s would measure warm-up, not a leak
  (a 60 s run on the 2-core VM: +22 % from 20 s, the worker +105 %);
- underflows are reported and bounded loosely (<= 600 in 60 s, a tenth of the periods' seconds):
  jackd runs without realtime priority on a shared 2-core VM, where other jobs cost xruns we do not
  cause (134 in one 60 s run with the machine's load at 2.3); 0 is the benchmark's target;
- starvations bounded (<= 80): the tiny worker on a CPU must keep 8 slots fed after its start;
  the offline render waits for its clips, so it has none.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK_S = 256 / 44100


@pytest.mark.jack
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_60_second_soak_live_and_offline() -> None:
    if shutil.which("jackd") is None:
        pytest.skip("jackd not installed: apt-get install jackd2")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "60",
                           "--offline-seconds", "60", "--warmup", "30"],
                          capture_output=True, text=True, timeout=290, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "soak"
    live, offline = result["runs"]
    for run in (live, offline):
        assert "error" not in run, run
        assert run["recorded_s"] is not None and abs(run["recorded_s"] - run["seconds"]) <= BLOCK_S, run
        assert run["archive_mb"] is not None and 0 < run["archive_mb"] <= 1000.0, run  # every clip kept, under the cap
    assert live["mode"] == "live" and offline["mode"] == "offline"
    assert live["rss_start_mb"] is not None and live["rss_growth_pct"] <= 25.0, live
    assert live["underflows"] <= 600, live
    # jackd's xruns by cause (its verbose log), and the underflows not at one of the driver's own
    assert live["driver_xruns"] >= 0 and live["client_xruns"] >= 0 and live["late_clients"] in ([], ["PortAudio"]), live
    assert live["underflows_ours"] + live["underflows_at_driver_xruns"] == live["underflows"], live
    assert live["starvations"] <= 80, live
    assert live["clips_dropped"] == 0 and live["recorder_overflows"] == 0, live
    assert offline["starvations"] == 0, offline
