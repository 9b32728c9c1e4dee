"""The quickstart notebook runs at a tiny size (its code cells, IPython magics and shell lines
skipped: the package is already installed here)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def notebook_script(path: str) -> str:
  cells = json.load(open(path, encoding="utf-8"))["cells"]
  lines = []
  for cell in cells:
    if cell["cell_type"] != "code":
      continue
    for line in "".join(cell["source"]).splitlines():
      stripped = line.strip()
      if stripped.startswith(("%", "!")):  # IPython magics / shell: the package is installed
        line = line[:len(line) - len(line.lstrip())] + "pass"
      lines.append(line)
  return "\n".join(lines)


def test_quickstart_notebook_runs_tiny(tmp_path, run_numbers):
  script = tmp_path / "quickstart.py"
  # The notebook's last expressions and display() calls need an IPython display stub here.
  stub = ("import sys, types\n"
          "import flax.nnx  # imports treescope, which probes IPython, before the stub exists\n"
          "m = types.ModuleType('IPython.display')\n"
          "m.Image = lambda path: open(path, 'rb').read()\n"
          "m.Markdown = str\n"
          "m.display = lambda *a: [print(len(x) if isinstance(x, bytes) else x) for x in a]\n"
          "ipy = types.ModuleType('IPython')\n"
          "ipy.version_info, ipy.get_ipython = (9, 0), lambda: None\n"
          "sys.modules['IPython'] = ipy\n"
          "sys.modules['IPython.display'] = m\n")
  script.write_text(stub + notebook_script(os.path.join(ROOT, "notebooks", "quickstart.ipynb")))
  env = dict(os.environ, GIMP_JAX_NOTEBOOK_TINY="1", GIMP_JAX_NOTEBOOK_DIR=str(tmp_path / "nb"),
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tsne_train.png" in proc.stdout
  # results.json holds the numbers NumPy recomputes from the predictions the run wrote.
  run_numbers(str(tmp_path / "nb" / "run"), str(tmp_path / "nb" / "cohort" / "labels.csv"))
