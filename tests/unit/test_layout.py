"""The house rules that no contract of import-linter expresses: no recipe is known by name outside
titok_jax/recipes/, and the library imports no torch (only tests/references do)."""

import ast
import pathlib
import subprocess
import sys

from helpers import REPO

from titok_jax import recipes

PACKAGE = REPO / "titok_jax"
RECIPE_NAMES = set(recipes.REGISTRY) | set(recipes.DEPRECATED)


def _recipe_branches(path: pathlib.Path) -> list[str]:
    """Comparisons that branch on a recipe: `x.recipe == ...`, `... in (recipe names)`, `"maskgit" != y`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names_recipe = any(
            (isinstance(o, ast.Attribute) and o.attr == "recipe")
            or (isinstance(o, ast.Subscript) and isinstance(o.slice, ast.Constant) and o.slice.value == "recipe")
            for o in operands
        )
        constants = {c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)}
        if names_recipe or constants & RECIPE_NAMES:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_recipe_name_branch_outside_recipes():
    branches = [
        line
        for path in sorted(PACKAGE.rglob("*.py"))
        if "recipes" not in path.relative_to(PACKAGE).parts
        for line in _recipe_branches(path)
    ]
    assert branches == [], "branch on a recipe outside titok_jax/recipes/:\n" + "\n".join(branches)


def test_the_rule_catches_a_recipe_branch(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('if config.recipe == "maskgit":\n    pass\nif name in ("two_stage_1", "x"):\n    pass\n')
    assert len(_recipe_branches(bad)) == 2


def test_the_library_imports_no_torch():
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
    )
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
