"""The golden-file generators (scripts/make_golden*.py): each refuses to overwrite a frozen file,
and each writes its frozen files byte for byte (tests/golden/README.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import GOLDEN_DIR, REPO_DIR
from tests.policies.test_golden import SCHEDULES


def run_script(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_DIR / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def refuses_to_overwrite(target: Path, script: str, *args: str) -> None:
    """``script`` run over a copy of the frozen ``target`` fails, says why, and leaves it be."""
    shutil.copyfile(GOLDEN_DIR / target.name, target)
    before = target.read_bytes()
    proc = run_script(script, *args, timeout=60)
    assert proc.returncode != 0
    assert "refusing to overwrite" in proc.stderr
    assert target.read_bytes() == before


def test_make_golden_schedules_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "cosine@1.jsonl"
    refuses_to_overwrite(
        target, "make_golden_schedules.py", "--out-dir", str(tmp_path), "--family", "cosine"
    )


def test_make_golden_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "plateau@1.jsonl"
    refuses_to_overwrite(target, "make_golden.py", "--out", str(target))


GENERATORS = {  # each script, and the golden files it writes
    "make_golden.py": ["plateau@1"],
    "make_golden_plateau2.py": ["plateau@2"],
    "make_golden_range_test.py": ["range_test@1"],
    "make_golden_compose.py": ["sequence@1", "scaled@1"],
    "make_golden_wsd.py": ["wsd@1"],
    "make_golden_groups.py": ["groups@1"],
    "make_golden_schedules.py": [f"{name}@1" for name in SCHEDULES],
    "make_golden_extras.py": ["one_cycle@2", "cyclic@2"],
}


@pytest.mark.parametrize("script", sorted(GENERATORS))
def test_each_generator_writes_its_golden_files_byte_for_byte(script: str, tmp_path: Path) -> None:
    """The frozen files are what their scripts make, reference cross-checks included: a file
    edited by hand, or a script that drifted, fails here."""
    names = GENERATORS[script]
    family = script in (
        "make_golden_compose.py",
        "make_golden_schedules.py",
        "make_golden_extras.py",
    )
    where = (
        ["--out-dir", str(tmp_path)] if family else ["--out", str(tmp_path / f"{names[0]}.jsonl")]
    )
    done = run_script(script, *where, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in names:
        made = (tmp_path / f"{name}.jsonl").read_bytes()
        assert made == (GOLDEN_DIR / f"{name}.jsonl").read_bytes(), f"{script} made another {name}"
