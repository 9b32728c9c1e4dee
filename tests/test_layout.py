"""The package's import graph: no cycle between gimp_jax modules, and library code never imports
the scripts in experiments/ (or a top-level `configs` that an installed package does not have)."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports() -> dict[str, set[str]]:
  """{module: imported names that start with gimp_jax, experiments or configs}."""
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, "gimp_jax")):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
      found = set()
      for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
          found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
          found |= {f"{node.module}.{a.name}" for a in node.names}
      out[module] = {n for n in found if n.split(".")[0] in ("gimp_jax", "experiments", "configs")}
  return out


def _graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
  def owner(name):
    while name not in imports and "." in name:
      name = name.rsplit(".", 1)[0]
    return name if name in imports else None
  return {m: {owner(n) for n in names} - {None, m} for m, names in imports.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(u):
    state[u] = "open"
    stack.append(u)
    for v in sorted(graph[u]):
      if state.get(v) == "open":
        return stack[stack.index(v):] + [v]
      if v not in state and (found := visit(v)):
        return found
    stack.pop()
    state[u] = "done"
    return None
  for u in sorted(graph):
    if u not in state and (found := visit(u)):
      return found
  return None


def test_no_import_cycle_in_the_library():
  graph = _graph(_imports())
  assert len(graph) > 40 and graph["gimp_jax.train.run"]  # the graph was really read
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_library_never_imports_experiments_or_top_level_configs():
  bad = {m: sorted(n for n in names if not n.startswith("gimp_jax"))
         for m, names in _imports().items()}
  assert not {m: n for m, n in bad.items() if n}


def test_no_library_file_over_500_lines():
  long = {}
  for folder, _, files in os.walk(os.path.join(ROOT, "gimp_jax")):
    for name in files:
      if name.endswith(".py"):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
          n = sum(1 for _ in f)
        if n > 500:
          long[os.path.relpath(os.path.join(folder, name), ROOT)] = n
  assert not long


def test_only_the_experiments_tests_import_experiments():
  here = os.path.join(ROOT, "tests")
  bad = []
  for name in sorted(os.listdir(here)):
    if not name.endswith(".py") or name.startswith("test_experiments"):
      continue
    tree = ast.parse(open(os.path.join(here, name), encoding="utf-8").read())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      bad += [f"{name}: {n}" for n in names if n.split(".")[0] == "experiments"]
  assert not bad


def test_committed_results_carry_no_absolute_paths():
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, "experiments", "results")):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
      found += [f"{os.path.relpath(path, ROOT)}: {m}"
                for m in re.findall(r"(?<![\w.])/(?:work|root|home|tmp|Users)/[^\s\"']*", text)]
  assert not found, found[:5]
