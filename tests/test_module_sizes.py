"""The house's size rule: no module of src/cxr over 400 lines (issue 25).

The web page's own HTML, JavaScript and CSS files are not Python modules and are not
counted. A module that grows past the limit is split by concern, not squeezed.
"""

from pathlib import Path

MAX_LINES = 400
SRC = Path(__file__).resolve().parents[1] / "src" / "cxr"


def module_lengths(root: Path) -> dict[str, int]:
    """Lines per Python module under ``root``, keyed by the path relative to it."""
    return {
        str(path.relative_to(root)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(root.rglob("*.py"))
    }


def test_the_package_is_found():
    lengths = module_lengths(SRC)
    assert "modelfile.py" in lengths and len(lengths) > 50


def test_no_module_is_over_400_lines():
    over = {name: n for name, n in module_lengths(SRC).items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by concern): {over}"


def test_the_count_sees_a_long_module(tmp_path):
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    lengths = module_lengths(tmp_path)
    assert lengths == {"long.py": MAX_LINES + 1, "short.py": MAX_LINES}
