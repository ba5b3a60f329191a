"""No committed file holds an absolute path of the machine that made it (portable results)."""

import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = Path.home()


def machine_paths() -> re.Pattern[str]:
    """This checkout, the folder that holds it (and so other checkouts beside it) and the home
    folder (where other checkouts and runs lived), as path prefixes."""
    shared = {Path("/"), Path("/tmp"), Path(tempfile.gettempdir())}  # examples name /tmp/...
    prefixes = {f"{folder}/" for folder in (ROOT, ROOT.parent, HOME) if folder not in shared}
    return re.compile("|".join(re.escape(p) for p in sorted(prefixes)))


def test_no_committed_file_holds_an_absolute_path_of_this_machine():
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    pattern = machine_paths()
    found = []
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (PNG)
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name.decode()}:{number}: {line.strip()[:120]}")
    assert not found, "absolute paths in committed files:\n" + "\n".join(found[:20])


def test_committed_run_records_hold_no_absolute_path_at_all():
    """Records (config, summary, rounds, runs.csv) name folders relative to the repository, even
    where a run wrote to a scratch folder such as /tmp."""
    records = subprocess.run(
        ["git", "ls-files", "experiments/results"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    absolute = re.compile(r'(?:^|[\s"=,:]|\\")/(?:tmp|root|work|home|var|mnt)/')
    found = [
        f"{name}:{number}"
        for name in records.splitlines()
        if name.endswith((".json", ".jsonl", ".csv"))
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1)
        if absolute.search(line)
    ]
    assert not found, "absolute paths in run records:\n" + "\n".join(found[:20])
