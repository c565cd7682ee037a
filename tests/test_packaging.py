"""The wheel ships what users of a typed, licensed package expect: py.typed and the LICENSE."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_license_and_py_typed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("adaptact-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "adaptact/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names





def test_no_private_torch_attribute_in_src():
    import re

    pattern = re.compile(r"\b(?:torch|nn|F)(?:\.\w+)*?\._(?!_)\w+(?:\.\w+)*")  # not dunders
    found = set()
    for path in (ROOT / "src" / "adaptact").rglob("*.py"):
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            for match in pattern.findall(code):
                found.add((path.relative_to(ROOT / "src" / "adaptact").as_posix(), match))
    assert found == set(), found
