"""The README's Python examples run as written (documentation that matches the code)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README lost its python examples"
    namespaces = []
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
        namespaces.append(namespace)
    loss_example, lab_example = namespaces[0], namespaces[1]
    assert loss_example["loss"].shape == ()
    rec = lab_example["record"]
    assert rec.status == ["ok"] * 4
    assert (rec.j_final <= rec.j_star + 1e-9).all()
    assert torch.isclose(lab_example["j_star"], rec.j_star[0])
    (lm,) = [ns for ns in namespaces if "train_lm_grpo" in ns]
    lm_rec = lm["record"]
    assert lm_rec.status == ["ok"] and lm_rec.stacked("step")["probe_kl"].shape == (1, 2)
    assert 0.0 <= float(lm_rec.summary["eval_acc_final"][0]) <= 1.0
