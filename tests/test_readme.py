"""The README's Python example runs as written (documentation that matches the code)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
        assert "loss" in namespace and namespace["loss"].shape == ()
